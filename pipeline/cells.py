"""The identity of a benchmark cell: its fields and its name, defined once.

A cell is one (strategy, attention algorithm, rank count, prompt length) of the matrix; its name
`{strategy}_{algo}_np{nranks}_p{prompt_len}` is its file name under results/runs/. The bench JSON
holds the same fields in its `cell` block. Everything that names cells (the Snakefile, the
study tools, verify, the report) goes through this module, which imports nothing of the project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALGORITHMS = ("standard", "online_softmax")
PATTERN = "{strategy}_{algo}_np{nranks}_p{prompt_len}"
_NAME = re.compile(r"^(?P<strategy>[a-z][a-z0-9.]*?)_(?P<algo>" + "|".join(ALGORITHMS)
                   + r")_np(?P<nranks>\d+)_p(?P<prompt_len>\d+)$")


@dataclass(frozen=True, order=True)
class CellId:
    strategy: str
    algo: str
    nranks: int
    prompt_len: int

    @property
    def name(self) -> str:
        return PATTERN.format(strategy=self.strategy, algo=self.algo, nranks=self.nranks,
                              prompt_len=self.prompt_len)

    @classmethod
    def parse(cls, name: str) -> CellId:
        """The cell a name stands for; ValueError naming the expected shape otherwise."""
        m = _NAME.match(name)
        if m is None:
            raise ValueError(f"cell name {name!r} is not {PATTERN} (algo one of {', '.join(ALGORITHMS)})")
        return cls(m["strategy"], m["algo"], int(m["nranks"]), int(m["prompt_len"]))

    @classmethod
    def of_run(cls, run: dict) -> CellId:
        """The cell a bench JSON measured (from its `cell` block)."""
        c = run["cell"]
        return cls(c["parallel_strategy"], c["attention_algo"], int(c["nranks"]), int(c["prompt_len"]))

    def cell_block(self) -> dict:
        """The entries of a bench JSON's `cell` block that identify the cell (`of_run` reads them)."""
        return {"parallel_strategy": self.strategy, "attention_algo": self.algo, "nranks": self.nranks,
                "prompt_len": self.prompt_len}
