"""Number formatting and markdown tables: the only place the report turns numbers into text."""

from __future__ import annotations

import math

PHASES = ("prefill", "decode")


def is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def fnum(x: object, digits: int = 1) -> str:
    """A number as the report prints it: "—" when absent, thousands separated from 100 on."""
    if not is_number(x) or not math.isfinite(x):
        return "—"
    if isinstance(x, int):
        return str(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}" if abs(x) >= 1 or x == 0 else f"{x:.3g}"


def pct(x: object) -> str:
    """A fraction as a whole percent (0.914 -> "91%"), "—" when absent."""
    return f"{100 * x:.0f}%" if is_number(x) and math.isfinite(x) else "—"


def ratio(x: object) -> str:
    """A speed ratio: "×1.05", "—" when absent."""
    return f"×{x:.2f}" if is_number(x) and math.isfinite(x) else "—"


def fval(v: object) -> str:
    return fnum(v, 3) if is_number(v) else str(v)


def tok_s(median: object, low: object, high: object) -> str:
    """tokens/s with its run-to-run range: "105 (95.3–111)"."""
    return f"{fnum(median)} ({fnum(low)}–{fnum(high)})"


def ranks(p: int) -> str:
    return f"{p} rank{'s' if p != 1 else ''}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def flatten(d: object, prefix: str = "") -> dict[str, float | str]:
    """Nested dict -> {"a.b": leaf} for numbers and short strings (optional, unknown-shape keys)."""
    out: dict[str, float | str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, bool):
        out[prefix[:-1]] = str(d)
    elif isinstance(d, int | float):
        out[prefix[:-1]] = d
    elif isinstance(d, str) and len(d) < 40:
        out[prefix[:-1]] = d
    return out
