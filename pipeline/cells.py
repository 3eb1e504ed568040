"""The identity of a benchmark cell: its fields and its name, defined once.

A cell is one (strategy, attention algorithm, rank count, prompt length, weight dtype) of the
matrix; its name `{strategy}_{algo}_np{nranks}_p{prompt_len}[_{dtype}]` is its file name under
results/runs/, the dtype left out for float32 (the reference dtype, and every name from before the
dtype axis keeps meaning what it meant). The bench JSON holds the same fields in its `cell` block.
Everything that names cells (the Snakefile, the study tools, verify, the report) goes through
this module, which imports nothing of the project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

ALGORITHMS = ("standard", "online_softmax")
DTYPES = ("float32", "bf16", "int8")  # the config's and the export CLI's names; float32 first: the reference
REFERENCE_DTYPE = DTYPES[0]
MANIFEST_DTYPES = {"float32": "float32", "bfloat16": "bf16", "int8": "int8"}  # an export's manifest "dtype"
PATTERN = "{strategy}_{algo}_np{nranks}_p{prompt_len}[_{dtype}]"
_NAME = re.compile(r"^(?P<strategy>[a-z][a-z0-9.]*?)_(?P<algo>" + "|".join(ALGORITHMS)
                   + r")_np(?P<nranks>\d+)_p(?P<prompt_len>\d+)"
                   + r"(?:_(?P<dtype>" + "|".join(DTYPES[1:]) + r"))?$")


@dataclass(frozen=True, order=True)
class CellId:
    strategy: str
    algo: str
    nranks: int
    prompt_len: int
    dtype: str = REFERENCE_DTYPE  # of the weights and the projections' compute: one of DTYPES

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"cell dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")

    @property
    def name(self) -> str:
        suffix = "" if self.dtype == REFERENCE_DTYPE else f"_{self.dtype}"
        return f"{self.strategy}_{self.algo}_np{self.nranks}_p{self.prompt_len}{suffix}"

    @property
    def low_precision(self) -> bool:
        """Held against the float32 cells too (NMSE, KL, top-1), not only its own dtype's reference."""
        return self.dtype != REFERENCE_DTYPE

    def with_dtype(self, dtype: str) -> CellId:
        return replace(self, dtype=dtype)

    @classmethod
    def parse(cls, name: str) -> CellId:
        """The cell a name stands for; ValueError naming the expected shape otherwise."""
        m = _NAME.match(name)
        if m is None:
            raise ValueError(f"cell name {name!r} is not {PATTERN} (algo one of {', '.join(ALGORITHMS)}; "
                             f"dtype, when not {REFERENCE_DTYPE}, one of {', '.join(DTYPES[1:])})")
        return cls(m["strategy"], m["algo"], int(m["nranks"]), int(m["prompt_len"]),
                   m["dtype"] or REFERENCE_DTYPE)

    @classmethod
    def of_run(cls, run: dict) -> CellId:
        """The cell a bench JSON measured (from its `cell` block)."""
        c = run["cell"]
        return cls(c["parallel_strategy"], c["attention_algo"], int(c["nranks"]), int(c["prompt_len"]),
                   c.get("dtype", REFERENCE_DTYPE))  # runs from before the dtype axis: float32

    def cell_block(self) -> dict:
        """The entries of a bench JSON's `cell` block that identify the cell (`of_run` reads them)."""
        return {"parallel_strategy": self.strategy, "attention_algo": self.algo, "nranks": self.nranks,
                "prompt_len": self.prompt_len, "dtype": self.dtype}
