"""The first screen: per prompt length, dtype and phase, the fastest configuration measured, its
tokens/s, its speed-up over 1 rank, the runner-up, and whether every cell verified; and the same
ranking inside each rank count (the report's Findings). Everything is ranked within one dtype (a bf16
cell is never float32's fastest, nor its 1-rank cell); a low-precision answer also says how much
faster it is than float32's fastest cell of the same prompt length and phase.

records() and rankings() compute; first_screen() renders their records only.
"""

from __future__ import annotations

from pipeline.cells import REFERENCE_DTYPE
from pipeline.report.fmt import PHASES, fnum, ranks, ratio, table, tok_s
from pipeline.report.load import Cell, dtype_groups


def entry(cell: Cell, phase: str) -> dict:
    """What the first screen says about one cell in one phase."""
    ph = cell.run[phase]
    return {
        "cell": cell.name,
        "label": cell.label,
        "dtype": cell.dtype,
        "strategy": cell.strategy,
        "algo": cell.algo,
        "nranks": cell.nranks,
        "threads_per_rank": cell.run["cell"].get("threads_per_rank"),
        "oversubscribed": bool(cell.run.get("environment", {}).get("oversubscribed")),
        "tokens_per_s": ph["tokens_per_s"],
        "tokens_per_s_min": ph["tokens_per_s_min"],
        "tokens_per_s_max": ph["tokens_per_s_max"],
    }


def ranked(cells: list[Cell], phase: str) -> list[Cell]:
    """Measured cells, fastest first (ties keep matrix order)."""
    return sorted((c for c in cells if c.run), key=lambda c: -c.tokens_per_s(phase))


def lead(first: Cell, second: Cell, phase: str) -> dict:
    """How far the first is ahead of the second, and whether their min–max ranges overlap (then
    the order could swap from one run to the next)."""
    a, b = first.run[phase], second.run[phase]
    return {
        "lead_pct": 100 * (a["tokens_per_s"] / b["tokens_per_s"] - 1),
        "within_spread": a["tokens_per_s_min"] <= b["tokens_per_s_max"],
    }


def verified(cells: list[Cell]) -> dict:
    measured = [c for c in cells if c.run]
    failed = [c.name for c in measured if not (c.check and c.check["ok"])]
    return {
        "cells_expected": len(cells),
        "cells_measured": len(measured),
        "cells_verified": len(measured) - len(failed),
        "cells_not_verified": failed,
        "cells_missing": [c.name for c in cells if c.status == "missing"],
        "all_verified": bool(measured) and not failed,
    }


def one_rank(cells: list[Cell], top: Cell) -> Cell | None:
    """The same strategy and algorithm on 1 rank, measured."""
    return next(
        (c for c in cells if c.run and c.nranks == 1 and (c.strategy, c.algo) == (top.strategy, top.algo)),
        None,
    )


def answer(cells: list[Cell], prompt_len: int, dtype: str, phase: str) -> dict:
    """The first screen's row of one prompt length, dtype and phase ("fastest" None: no cell
    measured); `cells` are that prompt length's and dtype's."""
    order = ranked(cells, phase)
    if not order:
        return {"prompt_len": prompt_len, "dtype": dtype, "phase": phase, "fastest": None} | verified(cells)
    top = order[0]
    own = one_rank(cells, top)
    best1 = next((c for c in order if c.nranks == 1), None)
    out = {
        "prompt_len": prompt_len,
        "dtype": dtype,
        "phase": phase,
        "fastest": entry(top, phase),
        "one_rank_cell": own.name if own else None,
        "speedup_over_1rank": top.tokens_per_s(phase) / own.tokens_per_s(phase) if own else None,
        "fastest_1rank_cell": best1.name if best1 else None,
        "speedup_over_fastest_1rank": top.tokens_per_s(phase) / best1.tokens_per_s(phase) if best1 else None,
        "runner_up": entry(order[1], phase) if len(order) > 1 else None,
        "lead_pct": None,
        "within_spread": None,
    }
    if len(order) > 1:
        out.update(lead(top, order[1], phase))
    return out | verified(cells)


def over_float32(recs: list[dict]) -> None:
    """A low-precision answer's fastest over float32's fastest of its prompt length and phase."""
    f32 = {(a["prompt_len"], a["phase"]): a["fastest"] for a in recs if a["dtype"] == REFERENCE_DTYPE}
    for a in recs:
        base = f32.get((a["prompt_len"], a["phase"]))
        a["speedup_over_float32_fastest"] = (
            a["fastest"]["tokens_per_s"] / base["tokens_per_s"]
            if a["fastest"] and base and a["dtype"] != REFERENCE_DTYPE else None
        )


def records(cells: list[Cell]) -> list[dict]:
    """One answer per (prompt length, dtype, phase) of the matrix, float32 first."""
    out = []
    for n in sorted({c.prompt_len for c in cells}):
        for dtype, sub in dtype_groups([c for c in cells if c.prompt_len == n]):
            out += [answer(sub, n, dtype, phase) for phase in PHASES]
    over_float32(out)
    return out


def rankings(cells: list[Cell]) -> list[dict]:
    """Per (prompt length, dtype, phase, rank count): the cells fastest first, the lead of the fastest
    over the runner-up and over the slowest."""
    out = []
    for n in sorted({c.prompt_len for c in cells}):
        for dtype, sub in dtype_groups([c for c in cells if c.prompt_len == n]):
            for phase in PHASES:
                for p in sorted({c.nranks for c in sub}):
                    order = ranked([c for c in sub if c.nranks == p], phase)
                    if not order:
                        continue
                    rec = {
                        "prompt_len": n,
                        "dtype": dtype,
                        "phase": phase,
                        "nranks": p,
                        "cells": [entry(c, phase) for c in order],
                    }
                    if len(order) > 1:
                        rec.update(lead(order[0], order[1], phase))
                        rec["lead_over_slowest_pct"] = lead(order[0], order[-1], phase)["lead_pct"]
                    out.append(rec)
    return out


def layout(e: dict) -> str:
    threads = e["threads_per_rank"]
    return f"{e['label']}, {e['nranks']} x {threads if threads is not None else '?'}" + (
        " †" if e["oversubscribed"] else ""
    )


def verified_text(a: dict) -> str:
    if not a["cells_measured"]:
        return f"— (none of {a['cells_expected']} measured)"
    text = "yes" if a["all_verified"] else f"**no**: {', '.join(a['cells_not_verified'])}"
    text += f" ({a['cells_verified']} of {a['cells_measured']}"
    return text + (f"; {len(a['cells_missing'])} missing)" if a["cells_missing"] else ")")


def axis_of(recs: list[dict]) -> bool:
    """Whether records span more than float32 (then the dtype is shown beside the prompt length)."""
    return any(r.get("dtype", REFERENCE_DTYPE) != REFERENCE_DTYPE for r in recs)


def answer_row(a: dict, axis: bool) -> list[str]:
    where = [str(a["prompt_len"])] + ([a["dtype"]] if axis else []) + [a["phase"]]
    top = a["fastest"]
    if top is None:
        return [*where, "no cell measured", *(["—"] * (5 + axis)), verified_text(a)]
    second = a["runner_up"]
    runner = f"{layout(second)}: {fnum(second['tokens_per_s'])}" if second else "—"
    margin = (
        "—"
        if second is None
        else f"{a['lead_pct']:.1f}%" + (" (ranges overlap)" if a["within_spread"] else "")
    )
    return [
        *where,
        f"**{layout(top)}**",
        tok_s(top["tokens_per_s"], top["tokens_per_s_min"], top["tokens_per_s_max"]),
        ratio(a["speedup_over_1rank"]),
        ratio(a["speedup_over_fastest_1rank"]),
        *([ratio(a.get("speedup_over_float32_fastest"))] if axis else []),
        runner,
        margin,
        verified_text(a),
    ]


def first_screen(answers: list[dict]) -> list[str]:
    """The answer table, then what its columns mean."""
    lines = ["## Fastest configuration on this machine", ""]
    if not any(a["fastest"] for a in answers):
        return lines + ["**No cell produced a result.**", ""]
    axis = axis_of(answers)
    head = [
        "prompt",
        *(["dtype"] if axis else []),
        "phase",
        "fastest (ranks x threads)",
        "tokens/s median (min–max)",
        "× its 1-rank cell",
        "× fastest 1-rank cell",
        *(["× float32's fastest"] if axis else []),
        "runner-up: tokens/s",
        "fastest's lead",
        "every cell verified",
    ]
    within = (
        " Each dtype is ranked on its own (its 1-rank cells, its runner-up, its verification against its "
        "own 1-rank reference); the low-precision rows also give their fastest cell over float32's fastest."
        if axis else ""
    )
    return lines + [
        *table(head, [answer_row(a, axis) for a in answers]),
        "",
        "Per prompt length and phase: the cell with the most tokens/s, its speed-up over the same strategy "
        "and algorithm on 1 rank and over the fastest 1-rank cell, the second fastest cell and the lead over "
        'it ("ranges overlap": their min–max ranges over the timed iterations overlap, so the order may swap '
        "from run to run), and whether every measured cell of that prompt length matched the single-rank "
        "reference (see Verification)." + within,
        "",
    ]


def ranking_lines(recs: list[dict]) -> list[str]:
    """Findings: the fastest inside each rank count, ahead of the runner-up and the slowest."""
    lines, axis = [], axis_of(recs)
    for r in recs:
        top = r["cells"][0]
        dtype = f"{r['dtype']}, " if axis else ""
        text = (
            f"- prompt {r['prompt_len']}, {dtype}{r['phase']}, {ranks(r['nranks'])}: fastest is "
            f"**{top['label']}** at {fnum(top['tokens_per_s'])} tokens/s"
        )
        if len(r["cells"]) > 1:
            text += f", {r['lead_pct']:.1f}% ahead of {r['cells'][1]['label']}" + (
                " (within the run-to-run spread: their min–max ranges overlap)" if r["within_spread"] else ""
            )
        if len(r["cells"]) > 2:
            text += f" and {r['lead_over_slowest_pct']:.1f}% ahead of the slowest ({r['cells'][-1]['label']})"
        lines.append(text + ".")
    return lines
