"""Findings computed across cells: sequence against head-wise, online_softmax against standard, the
seed's claims set beside what was measured, and peak memory of the two algorithms on 1 rank.

Each is a ratio or a count; none is judged against a goal. Every pair and every "fastest" is within
one dtype: cells are matched on (strategy, algorithm, ranks, prompt length, dtype).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from pipeline.cells import DTYPES, REFERENCE_DTYPE
from pipeline.report import verify
from pipeline.report.answers import axis_of, ranked, ranking_lines
from pipeline.report.fmt import PHASES, fnum, ranks, ratio
from pipeline.report.load import Cell, dtype_groups

SEED_BEST = ("sequence", "online_softmax", 2)  # the seed's "current best configuration"


Key = tuple[str, str, int, int, str]  # (strategy, algorithm, ranks, prompt length, dtype)


def pairs(
    cells: list[Cell], phase: str, pick: Callable[[Cell], bool], partner: Callable[[Key], Key]
) -> list[tuple[Cell, Cell, float]]:
    """(a, b, a's tokens/s over b's) for measured cells a that `pick` selects and b = partner(a's key)."""
    index = {(c.strategy, c.algo, c.nranks, c.prompt_len, c.dtype): c for c in cells if c.run}
    out = []
    for key, a in index.items():
        b = index.get(partner(key)) if pick(a) else None
        if b is not None:
            out.append((a, b, a.tokens_per_s(phase) / b.tokens_per_s(phase)))
    return out


def pair_record(a: Cell, b: Cell, r: float) -> dict:
    return {
        "prompt_len": a.prompt_len,
        "dtype": a.dtype,
        "nranks": a.nranks,
        "strategy": a.strategy,
        "algo": a.algo,
        "cell": a.name,
        "other_cell": b.name,
        "ratio": r,
    }


def sequence_vs_headwise(cells: list[Cell]) -> dict[str, list[dict]]:
    """Per phase: sequence's tokens/s over head-wise's in every matched multi-rank cell."""
    out = {}
    for phase in PHASES:
        matched = pairs(
            cells, phase, lambda c: c.strategy == "sequence" and c.nranks > 1, lambda k: ("headwise", *k[1:])
        )
        matched.sort(key=lambda m: (DTYPES.index(m[0].dtype), m[0].prompt_len, m[0].nranks,
                                    m[0].algo != "standard"))
        out[phase] = [pair_record(*m) for m in matched]
    return out


def online_vs_standard(cells: list[Cell]) -> dict[str, dict]:
    """Per phase: online_softmax's tokens/s over standard's in matched cells, and their median."""
    out = {}
    for phase in PHASES:
        matched = pairs(
            cells, phase, lambda c: c.algo == "online_softmax", lambda k: (k[0], "standard", *k[2:])
        )
        rs = [r for _, _, r in matched]
        out[phase] = {
            "matched": len(rs),
            "online_faster": sum(r > 1 for r in rs),
            "median_ratio": statistics.median(rs) if rs else None,
        }
    return out


def seed_best(cells: list[Cell]) -> list[dict]:
    """The seed's pick (sequence + online_softmax on 2 ranks) against the fastest cell, per length and
    dtype."""
    out = []
    for n in sorted({c.prompt_len for c in cells if c.run}):
        for dtype, sub in dtype_groups([c for c in cells if c.prompt_len == n and c.run]):
            out += seed_best_of(sub, n, dtype)
    return out


def seed_best_of(sub: list[Cell], n: int, dtype: str) -> list[dict]:
    """seed_best's records of one prompt length and dtype (`sub`: its measured cells)."""
    seed = next((c for c in sub if (c.strategy, c.algo, c.nranks) == SEED_BEST), None)
    out = []
    for phase in PHASES:
        top = ranked(sub, phase)[0]
        out.append({
            "prompt_len": n,
            "dtype": dtype,
            "phase": phase,
            "fastest_cell": top.name,
            "fastest_label": top.label,
            "fastest_nranks": top.nranks,
            "fastest_tokens_per_s": top.tokens_per_s(phase),
            "seed_cell": seed.name if seed else None,
            "seed_tokens_per_s": seed.tokens_per_s(phase) if seed else None,
            "seed_over_fastest": seed.tokens_per_s(phase) / top.tokens_per_s(phase) if seed else None,
        })
    return out


def scaling_sequence_vs_headwise(rows: list[dict]) -> dict[str, list[dict]]:
    """Per phase: both strategies' speed-ups over their own 1-rank cell, where both were measured."""
    by_key = {(r["strategy"], r["algorithm"], r["nranks"], r["prompt_len"],
               r.get("dtype", REFERENCE_DTYPE)): r for r in rows}
    out = {}
    for phase in PHASES:
        found = []
        for (strategy, algo, p, n, dtype), seq in sorted(
            by_key.items(), key=lambda kv: (DTYPES.index(kv[0][4]), kv[0][3], kv[0][1], kv[0][2])
        ):
            head = by_key.get(("headwise", algo, p, n, dtype))
            s, h = seq.get(f"{phase}_speedup"), head and head.get(f"{phase}_speedup")
            if strategy == "sequence" and p > 1 and s and h:
                found.append({"prompt_len": n, "dtype": dtype, "algo": algo, "nranks": p,
                              "sequence_speedup": s, "headwise_speedup": h})
        out[phase] = found
    return out


def peak_rss(cell: Cell, key: str = "peak_rss_mb") -> float:
    return max(cell.run.get("memory", {}).get(key) or [math.nan])


def memory_one_rank(cells: list[Cell]) -> list[dict]:
    """Peak RSS of online_softmax and standard on 1 rank, per strategy and prompt length."""
    out = []
    for a, b, _ in pairs(
        cells,
        "prefill",
        lambda c: c.algo == "online_softmax" and c.nranks == 1,
        lambda k: (k[0], "standard", *k[2:]),
    ):
        ma, mb = peak_rss(a), peak_rss(b)
        if math.isfinite(ma) and math.isfinite(mb):
            out.append(
                {
                    "prompt_len": a.prompt_len,
                    "dtype": a.dtype,
                    "strategy": a.strategy,
                    "online_softmax_peak_rss_mb": ma,
                    "standard_peak_rss_mb": mb,
                }
            )
    return out


def outputs(verification: dict | None) -> dict | None:
    """Whether both algorithms computed the reference's output, and the largest logits difference
    (float32's, and per dtype: each against its own dtype's reference)."""
    if not verification or not verification["cells"]:
        return None
    names = [c["cell"] for c in verification["cells"]]
    by_dtype = {d: [c["max_abs_diff"] for c in rows if isinstance(c["max_abs_diff"], int | float)]
                for d, rows in verify.by_dtype(verification).items()}
    return {
        "cells": len(names),
        "cells_ok": sum(c["ok"] for c in verification["cells"]),
        "both_algorithms": any("_online_softmax_" in n for n in names)
        and any("_standard_" in n for n in names),
        "max_abs_diff": max(by_dtype.get(REFERENCE_DTYPE, []), default=math.nan),
        "max_abs_diff_by_dtype": {d: max(v, default=math.nan) for d, v in by_dtype.items()},
        "near_ties": sum(c.get("near_tie_margin") is not None for c in verification["cells"]),
    }


def records(cells: list[Cell], rows: list[dict], verification: dict | None) -> dict:
    return {
        "sequence_vs_headwise": sequence_vs_headwise(cells),
        "scaling_sequence_vs_headwise": scaling_sequence_vs_headwise(rows),
        "online_vs_standard": online_vs_standard(cells),
        "seed_best": seed_best(cells),
        "memory_one_rank": memory_one_rank(cells),
        "outputs": outputs(verification),
    }


def dtype_of(rec: dict, axis: bool) -> str:
    """ "bf16, " before the rest of a finding's place when the matrix has a dtype axis."""
    return f"{rec.get('dtype', REFERENCE_DTYPE)}, " if axis else ""


def sequence_lines(f: dict) -> list[str]:
    lines = []
    for phase, matched in f["sequence_vs_headwise"].items():
        if not matched:
            continue
        wins = [m for m in matched if m["ratio"] > 1]
        where = "; ".join(
            f"prompt {m['prompt_len']}, {dtype_of(m, axis_of(matched))}P={m['nranks']}, {m['algo']} "
            f"({ratio(m['ratio'])})" for m in wins
        )
        lines.append(
            f"- Sequence vs head-wise parallelism, {phase}: sequence is faster in {len(wins)} of "
            f"{len(matched)} matched multi-rank cells" + (": " + where if wins else "") + "."
        )
    for m in f["memory_one_rank"]:
        ma, mb = m["online_softmax_peak_rss_mb"], m["standard_peak_rss_mb"]
        lines.append(
            f"- Peak RSS at prompt {m['prompt_len']}, {dtype_of(m, axis_of(f['memory_one_rank']))}"
            f"{m['strategy']}, 1 rank: online_softmax "
            f"{fnum(ma)} MB, standard {fnum(mb)} MB ({fnum(ma - mb)} MB difference)."
        )
    return lines


def seed_best_lines(f: dict) -> list[str]:
    """The seed's pick against the fastest cell, per prompt length and phase."""
    lines, axis = [], axis_of(f["seed_best"])
    for s in f["seed_best"]:
        claim = (
            f'- *"2 ranks + sequence + online_softmax is the best configuration"* (prompt {s["prompt_len"]}, '
            f"{dtype_of(s, axis)}{s['phase']}): "
        )
        top = (
            f"the fastest cell is {s['fastest_label']} on {ranks(s['fastest_nranks'])} "
            f"({fnum(s['fastest_tokens_per_s'])} tokens/s)"
        )
        if s["seed_cell"] is None:
            lines.append(claim + f"that cell was not measured; {top}.")
        elif s["seed_cell"] == s["fastest_cell"]:
            lines.append(claim + f"it is the fastest cell ({fnum(s['seed_tokens_per_s'])} tokens/s).")
        else:
            lines.append(
                claim + f"{top}; the seed's pick gives {fnum(s['seed_tokens_per_s'])} tokens/s, "
                f"{100 * (1 - s['seed_over_fastest']):.1f}% fewer."
            )
    return lines


def seed_lines(f: dict) -> list[str]:
    """The seed's claims, each beside the numbers measured here."""
    lines = seed_best_lines(f)
    for phase, found in f["scaling_sequence_vs_headwise"].items():
        claim = f'- *"sequence parallelism scales better than head-wise"* ({phase}): '
        if not found:
            lines.append(claim + "not measured here (needs both strategies on 1 and more ranks).")
            continue
        more = sum(x["sequence_speedup"] > x["headwise_speedup"] for x in found)
        detail = "; ".join(
            f"prompt {x['prompt_len']}, {dtype_of(x, axis_of(found))}{x['algo']}, P={x['nranks']}: sequence "
            f"{ratio(x['sequence_speedup'])} vs head-wise {ratio(x['headwise_speedup'])}"
            for x in found
        )
        lines.append(
            claim + f"sequence's speed-up over its 1-rank cell is the larger in {more} of {len(found)} "
            f"cases ({detail})."
        )
    for phase, o in f["online_vs_standard"].items():
        claim = f'- *"online_softmax is faster than standard"* ({phase}): '
        lines.append(
            claim
            + (
                "no matched cells."
                if not o["matched"]
                else f"online_softmax is faster in {o['online_faster']} of {o['matched']} matched cells, "
                f"median speed ratio online/standard ×{o['median_ratio']:.3f}."
            )
        )
    return lines + outputs_lines(f["outputs"])


def outputs_lines(out: dict | None) -> list[str]:
    lines = []
    if out and out["both_algorithms"]:
        claim = (
            '- *"standard and online_softmax give different output ranges (a numerical difference of the '
            'algorithms)"*: '
        )
        lines.append(
            claim + f"{out['cells_ok']} of {out['cells']} cells, of both algorithms and every strategy "
            "and rank count, produce the single-rank reference's greedy tokens with logits within "
            f"tolerance; the largest logits difference is {verify.fmt_diff(out['max_abs_diff'])}"
            + "".join(f", {d}'s (against its own 1-rank cell) {verify.fmt_diff(v)}"
                      for d, v in (out.get("max_abs_diff_by_dtype") or {}).items() if d != REFERENCE_DTYPE)
            + (f"; {out['near_ties']} low-precision cells' tokens part from their reference's at a near-tie"
               if out.get("near_ties") else "")
            + " (see Verification)."
        )
    return lines


def lines(summary: dict) -> list[str]:
    f = summary["findings"]
    out = [
        "## Findings",
        "",
        "Computed from the measurements above (summary.json: rankings, findings).",
        "",
        *ranking_lines(summary["rankings"]),
        "",
        *sequence_lines(f),
        "",
        "### The seed's claims beside this data",
        "",
        *seed_lines(f),
        "",
    ]
    missing = [r["cell"] for r in summary["cells"] if r["status"] == "missing"]
    if missing:
        out += [
            f"Missing cells ({len(missing)}), so findings above leave them out: {', '.join(missing)}.",
            "",
        ]
    return out
