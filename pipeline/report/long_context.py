"""Long prompts (from LONG_CONTEXT tokens): prefill tokens/s and peak RSS per layout across prompt
lengths, where sequence parallelism beats head-wise, and what standard attention's score tensor costs."""

from __future__ import annotations

import math

from pipeline.cells import DTYPES, REFERENCE_DTYPE
from pipeline.report.findings import pairs, peak_rss
from pipeline.report.fmt import fnum, ratio, table
from pipeline.report.load import Cell

LONG_CONTEXT = 1024  # prompt lengths from here on get the long-context section


def layouts_table(cells: list[Cell], lengths: list[int]) -> list[dict]:
    """Per (strategy, algorithm, ranks): at each prompt length its status, prefill tokens/s, peak RSS."""
    index = {(c.strategy, c.algo, c.nranks, c.dtype, c.prompt_len): c for c in cells}
    keys = sorted({k[:4] for k in index},
                  key=lambda k: (DTYPES.index(k[3]), k[2], k[0] != "headwise", k[1] != "standard"))
    rows = []
    for strategy, algo, p, dtype in keys:
        at = []
        for n in lengths:
            c = index.get((strategy, algo, p, dtype, n))
            at.append(
                {
                    "prompt_len": n,
                    "status": c.status if c else None,
                    "prefill_tokens_per_s": c.tokens_per_s("prefill") if c and c.run else None,
                    "peak_rss_mb_max": peak_rss(c) if c and c.run else None,
                    "oversubscribed": bool(
                        c and c.run and c.run.get("environment", {}).get("oversubscribed")
                    ),
                }
            )
        rows.append({"strategy": strategy, "algo": algo, "nranks": p, "dtype": dtype, "lengths": at})
    return rows


def algorithm_memory(cells: list[Cell]) -> list[dict]:
    """Long prompts: peak RSS and attention working memory of standard against online_softmax."""
    out = []
    matched = pairs(
        cells,
        "prefill",
        lambda c: c.algo == "online_softmax" and c.prompt_len >= LONG_CONTEXT,
        lambda k: (k[0], "standard", *k[2:]),
    )
    for a, b, _ in sorted(matched, key=lambda m: (m[0].prompt_len, m[0].nranks, m[0].strategy)):
        ma, mb = peak_rss(a), peak_rss(b)
        sa, sb = peak_rss(a, "attention_scratch_mb"), peak_rss(b, "attention_scratch_mb")
        if not (math.isfinite(ma) and math.isfinite(mb) and ma > 0):
            continue
        scratch = math.isfinite(sa) and math.isfinite(sb) and sa > 0
        out.append(
            {
                "prompt_len": a.prompt_len,
                "dtype": a.dtype,
                "strategy": a.strategy,
                "nranks": a.nranks,
                "standard_peak_rss_mb": mb,
                "online_softmax_peak_rss_mb": ma,
                "standard_over_online": mb / ma,
                "standard_scratch_mb": sb if scratch else None,
                "online_softmax_scratch_mb": sa if scratch else None,
                "scratch_ratio": sb / sa if scratch else None,
            }
        )
    return out


def records(cells: list[Cell]) -> dict | None:
    lengths = sorted({c.prompt_len for c in cells if c.run})
    if not lengths or lengths[-1] < LONG_CONTEXT:
        return None
    layouts = sorted(
        {
            c.run["cell"].get("sequence_layout", "contiguous")
            for c in cells
            if c.run and c.strategy == "sequence"
        }
    )
    return {
        "lengths": lengths,
        "sequence_layouts": layouts,
        "layouts": layouts_table(cells, lengths),
        "algorithm_memory": algorithm_memory(cells),
    }


def sequence_lines(matched_by_phase: dict[str, list[dict]]) -> list[str]:
    lines = []
    for phase, matched in matched_by_phase.items():
        if not matched:
            continue
        wins = [m for m in matched if m["ratio"] > 1]
        if wins:
            where = "; ".join(
                f"prompt {m['prompt_len']}, P={m['nranks']}, {m['algo']} ({ratio(m['ratio'])})" for m in wins
            )
            lines.append(
                f"- {phase}: sequence parallelism beats head-wise in {len(wins)} of {len(matched)} matched "
                f"cells: {where}."
            )
        else:
            m = max(matched, key=lambda m: m["ratio"])
            lines.append(
                f"- {phase}: sequence parallelism never beats head-wise here ({len(matched)} matched "
                f"cells); closest at prompt {m['prompt_len']}, P={m['nranks']}, {m['algo']}: "
                f"{ratio(m['ratio'])} head-wise's tokens/s."
            )
    return lines


def memory_line(m: dict) -> str:
    work = ""
    if m["scratch_ratio"] is not None:
        work = (
            f"; attention working memory standard {fnum(m['standard_scratch_mb'])} MB, online_softmax "
            f"{fnum(m['online_softmax_scratch_mb'], 2)} MB (×{m['scratch_ratio']:.0f})"
        )
    return (
        f"- peak RSS, prompt {m['prompt_len']}, {m['strategy']}, P={m['nranks']}: standard "
        f"{fnum(m['standard_peak_rss_mb'])} MB, online_softmax {fnum(m['online_softmax_peak_rss_mb'])} MB "
        f"(standard uses {ratio(m['standard_over_online'])}){work}."
    )


def lines(summary: dict) -> list[str]:
    rec = summary["long_context"]
    if rec is None:
        return []
    head = ["strategy + algorithm", "P"] + [
        x for n in rec["lengths"] for x in (f"p{n} prefill tok/s", f"p{n} peak RSS MB")
    ]
    body, axis = [], any(r.get("dtype", REFERENCE_DTYPE) != REFERENCE_DTYPE for r in rec["layouts"])
    for row in rec["layouts"]:
        named = f", {row['dtype']}" if axis else ""
        out = [f"{row['strategy']} + {row['algo']}{named}", str(row["nranks"])]
        for at in row["lengths"]:
            if at["prefill_tokens_per_s"] is None:
                out += [at["status"] or "", ""]
            else:
                out += [
                    fnum(at["prefill_tokens_per_s"]) + (" †" if at["oversubscribed"] else ""),
                    fnum(at["peak_rss_mb_max"]),
                ]
        body.append(out)
    layouts = rec["sequence_layouts"]
    return [
        "## Long context",
        "",
        "Prefill tokens/s and the largest rank's peak RSS at every prompt length measured"
        + (f" (sequence layout: {', '.join(layouts)})" if layouts else "")
        + ".",
        "",
        *table(head, body),
        "",
        *sequence_lines(summary["findings"]["sequence_vs_headwise"]),
        *[memory_line(m) for m in rec["algorithm_memory"]],
        "",
    ]
