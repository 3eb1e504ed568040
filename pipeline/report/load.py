"""Read the report's inputs (bench JSONs, verification, cost model, baselines) into records.

Nothing here formats text; every error names the file or argument at fault (ValueError).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.cells import DTYPES, REFERENCE_DTYPE, CellId
from pipeline.report import verify

# matrix order inside a prompt length, dtype and rank count: the plain variants first
STRATEGY_ORDER = {"headwise": 0, "sequence": 1}
ALGO_ORDER = {"standard": 0, "online_softmax": 1}


@dataclass
class Cell:
    id: CellId
    status: str = "missing"  # "ok", "missing", "n/a"
    reason: str = ""
    run: dict | None = None
    check: dict | None = None  # this cell's row of the verification

    name = property(lambda self: self.id.name)
    strategy = property(lambda self: self.id.strategy)
    algo = property(lambda self: self.id.algo)
    nranks = property(lambda self: self.id.nranks)
    prompt_len = property(lambda self: self.id.prompt_len)
    dtype = property(lambda self: self.id.dtype)

    @property
    def label(self) -> str:
        return f"{self.strategy} + {self.algo}"

    def tokens_per_s(self, phase: str) -> float:
        return self.run[phase]["tokens_per_s"]


def matrix_key(cell: Cell) -> tuple:
    return (
        cell.prompt_len,
        DTYPES.index(cell.dtype),
        cell.nranks,
        STRATEGY_ORDER.get(cell.strategy, 9),
        cell.strategy,
        ALGO_ORDER.get(cell.algo, 9),
        cell.algo,
    )


def dtype_groups(cells: list[Cell]) -> list[tuple[str, list[Cell]]]:
    """[(dtype, its cells)] in DTYPES order (float32 first): what "fastest", "1-rank cell" and a
    speed-up are computed within, so a bf16 cell never stands in for a float32 one."""
    present = {c.dtype for c in cells}
    return [(d, [c for c in cells if c.dtype == d]) for d in DTYPES if d in present]


def dtype_axis(cells: list[Cell]) -> bool:
    """Whether the matrix has more than float32: only then do tables and lines name the dtype."""
    return any(c.dtype != REFERENCE_DTYPE for c in cells)


def parse_not_applicable(items: list[str]) -> dict[str, str]:
    """--not-applicable CELL=REASON items -> {cell: reason}."""
    out = {}
    for item in items:
        name, sep, reason = item.partition("=")
        if not sep:
            raise ValueError(f"--not-applicable {item!r} is not CELL=REASON")
        CellId.parse(name)
        out[name] = reason
    return out


def collect(
    runs: dict[str, dict], expected: list[str] | None, not_applicable: dict[str, str], logs_dir: str | None
) -> list[Cell]:
    """One Cell per expected name (or per run when nothing is expected), in matrix order."""
    names = list(dict.fromkeys(expected)) if expected else sorted(set(runs) | set(not_applicable))
    cells = []
    for name in names:
        cell = Cell(CellId.parse(name))
        if name in not_applicable:
            cell.status, cell.reason = "n/a", not_applicable[name]
        elif name in runs:
            cell.status, cell.run = "ok", runs[name]
        else:
            log = f"{logs_dir}/{name}.log" if logs_dir else "its bench log"
            cell.reason = f"no result: the bench failed or was not run (see {log})"
        cells.append(cell)
    return sorted(cells, key=matrix_key)


def read_json(path: str | Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read {what} ({e})") from None


def load_verification(path: str | None, runs: dict[str, dict], atol: float, rtol: float) -> dict | None:
    """The verification result: the file verify wrote, or (no file given) computed here with the same
    code and tolerances, failing only the cells of a prompt length without a 1-rank cell."""
    if path:
        return read_json(path, "verification JSON")
    return verify.verify(runs, atol, rtol, strict=False) if runs else None


def attach_checks(cells: list[Cell], verification: dict | None) -> None:
    checks = {c["cell"]: c for c in verification["cells"]} if verification else {}
    for cell in cells:
        cell.check = checks.get(cell.name)


def load_costmodel(path: str | None) -> dict | None:
    """pipeline.study.costmodel's output; None when not given or not there (the section is left out)."""
    if not path or not Path(path).exists():
        return None
    return read_json(path, "cost model JSON")


def load_baselines(paths: list[str]) -> list[dict]:
    """pipeline.study.baseline results, in the order given (unavailable ones keep their reason)."""
    out = []
    for path in paths:
        b = read_json(path, "baseline JSON")
        if b.get("available") and not isinstance(b.get("cell"), dict):
            raise ValueError(f"{path}: baseline JSON without a 'cell' section")
        out.append(b)
    return out


def load_workflow_config(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--workflow-config is not JSON ({e})") from None
