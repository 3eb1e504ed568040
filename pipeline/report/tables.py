"""The per-cell tables: per prompt length and dtype (float32 first), prefill and decode per rank count
(the fastest row of its dtype bold, the HF baseline beside the float32 1-rank cells), scaling with
ranks against the 1-rank cell of the same dtype; and the cells without a result.

Rendered from summary.json's "cells" rows (the CSV's), "rankings" and "baselines" records.
"""

from __future__ import annotations

from pipeline.cells import DTYPES, REFERENCE_DTYPE
from pipeline.report import baselines as hf
from pipeline.report.fmt import PHASES, fnum, pct, ranks, ratio, table, tok_s

PREFILL_HEAD = [
    "strategy",
    "algorithm",
    "median ms",
    "ms/token",
    "tokens/s median (min–max)",
    "seed: total ms",
    "seed: ms/token",
    "seed: tokens/s",
]
DECODE_HEAD = [
    "strategy",
    "algorithm",
    "median ms",
    "ms/token",
    "tokens/s median (min–max)",
    "step p50 / p90 ms",
]
# per phase: (column, roofline key); decode's second is the layout's own read (a step's order)
ROOFLINE_COLUMNS = {
    "prefill": [("% of GEMM ceiling", "prefill_fraction")],
    "decode": [("% of streaming bandwidth", "decode_fraction"),
               ("% of its layout's read", "decode_fraction_in_order")],
}

ROOFLINE_WORDS = (
    "% of streaming bandwidth: against the node's read of the ranks' weights, all ranks at once (what "
    "the layout leaves of the machine's bandwidth); % of its layout's read: a step's time over reading "
    "the same weights in the step's order, pipeline stages in turn (how close the engine comes to what "
    "its layout allows). See Roofline.")


def roofline_columns(rows: list[dict], phase: str) -> list[tuple[str, str]]:
    """The roofline columns of a phase's table that some row has (older runs lack the second)."""
    return [(head, key) for head, key in ROOFLINE_COLUMNS[phase] if any(f"roofline.{key}" in r for r in rows)]


def dagger(row: dict) -> str:
    """† after an oversubscribed cell (more ranks x threads than cores)."""
    return " †" if row.get("oversubscribed") else ""


def status_lines(rows: list[dict]) -> list[str]:
    gaps = [r for r in rows if r["status"] != "ok"]
    lines = ["## Cells", "", f"{len(rows) - len(gaps)} of {len(rows)} cells measured."]
    if gaps:
        lines += [
            "",
            *table(["cell", "status", "why"], [[r["cell"], r["status"], r["reason"]] for r in gaps]),
        ]
    return lines + [""]


def cell_row(row: dict, phase: str, roofline: list[tuple[str, str]], bold: bool) -> list[str]:
    if row["status"] != "ok":
        width = len(PREFILL_HEAD if phase == "prefill" else DECODE_HEAD) + len(roofline)
        return [row["strategy"], row["algorithm"], row["status"], *(["—"] * (width - 3))]
    out = [
        row["strategy"],
        row["algorithm"] + dagger(row),
        fnum(row[f"{phase}_median_ms"]),
        fnum(row[f"{phase}_ms_per_token"], 2),
        tok_s(
            row[f"{phase}_tokens_per_s"], row[f"{phase}_tokens_per_s_min"], row[f"{phase}_tokens_per_s_max"]
        ),
    ]
    if phase == "prefill":
        out += [
            fnum(row.get("seed_total_ms")),
            fnum(row.get("seed_ms_per_token"), 2),
            fnum(row.get("seed_tokens_per_s")),
        ]
    else:
        p50 = row.get("decode_step_p50_ms")
        out += [f"{fnum(p50, 2)} / {fnum(row.get('decode_step_p90_ms'), 2)}" if p50 is not None else "—"]
    out += [pct(row.get(f"roofline.{key}")) for _, key in roofline]
    return [f"**{x}**" for x in out] if bold else out


def dtype_words(dtype: str | None) -> str:
    """ ", bf16 weights" in a heading of the dtype axis; nothing without one."""
    return f", {dtype} weights" if dtype else ""


def phase_intro(rows: list[dict], prompt_len: int, phase: str, dtype: str | None = None) -> list[str]:
    measured = [r for r in rows if r["status"] == "ok"]
    if phase == "prefill":
        iters = measured[0]["iters"] if measured else "the"
        return [
            f"### Prefill{dtype_words(dtype)} ({prompt_len} prompt tokens into an empty cache)",
            "",
            "median ms and tokens/s over the timed iterations (slowest rank); the seed's metric sums the "
            f"prefill time of all {iters} iterations (tokens = prompt length x iterations), as in the seed's "
            "tables.",
            "",
        ]
    gen = f"{measured[0]['gen_len']} greedy tokens" if measured else "greedy tokens"
    return [
        f"### Decode{dtype_words(dtype)} ({gen} after the prefill)",
        "",
        "median ms for all decode steps of one iteration; tokens/s = generated tokens / that time.",
        "",
    ]


def phase_tables(
    rows: list[dict], prompt_len: int, phase: str, fastest: dict, baseline: dict | None,
    dtype: str | None = None,
) -> list[str]:
    """One table per rank count at one prompt length (`rows`: one dtype's, named in the headings when
    given); `fastest` maps a rank count to its fastest cell (bold when the rank count has more than one
    measured cell)."""
    sub = [r for r in rows if r["prompt_len"] == prompt_len]
    roofline = roofline_columns(sub, phase)
    head = (PREFILL_HEAD if phase == "prefill" else DECODE_HEAD) + [h for h, _ in roofline]
    lines = phase_intro(sub, prompt_len, phase, dtype)
    if len(roofline) > 1:
        lines += [ROOFLINE_WORDS, ""]
    for p in sorted({r["nranks"] for r in sub} | ({1} if baseline else set())):
        body = [cell_row(r, phase, roofline, r["cell"] == fastest.get(p)) for r in sub if r["nranks"] == p]
        if baseline and p == 1:
            body.append(hf.table_row(baseline, phase, len(head)))
        lines += [f"**{ranks(p)}**", "", *table(head, body), ""]
        if baseline and p == 1 and phase == "prefill":
            lines += [hf.note(baseline), ""]
    return lines


def scaling_cell(row: dict | None, phase: str) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return row["status"]
    s, e = row.get(f"{phase}_speedup"), row.get(f"{phase}_efficiency")
    return fnum(row[f"{phase}_tokens_per_s"]) + (f" ({ratio(s)}, {pct(e)})" if s else "") + dagger(row)


def scaling_tables(rows: list[dict], prompt_len: int, dtype: str | None = None) -> list[str]:
    sub = [r for r in rows if r["prompt_len"] == prompt_len]
    ps = sorted({r["nranks"] for r in sub})
    lines = [
        f"### Scaling with ranks (prompt {prompt_len}{dtype_words(dtype)})",
        "",
        "tokens/s, then speed-up and parallel efficiency against the same strategy and algorithm on 1 rank"
        + (" with the same weights." if dtype else "."),
        "",
    ]
    layouts = dict.fromkeys((r["strategy"], r["algorithm"]) for r in sub)
    for phase in PHASES:
        body = []
        for strategy, algo in layouts:
            by_p = {r["nranks"]: r for r in sub if (r["strategy"], r["algorithm"]) == (strategy, algo)}
            body.append([f"{strategy} + {algo}", *[scaling_cell(by_p.get(p), phase) for p in ps]])
        lines += [f"**{phase}**", "", *table(["strategy + algorithm", *[f"P={p}" for p in ps]], body), ""]
    return lines


def fastest_by_ranks(rankings: list[dict], prompt_len: int, phase: str,
                     dtype: str = REFERENCE_DTYPE) -> dict[int, str]:
    """Rank count -> its fastest cell of the dtype, where it had a runner-up to beat."""
    return {
        r["nranks"]: r["cells"][0]["cell"]
        for r in rankings
        if (r["prompt_len"], r["phase"], r.get("dtype", REFERENCE_DTYPE)) == (prompt_len, phase, dtype)
        and len(r["cells"]) > 1
    }


def row_dtype(row: dict) -> str:
    return row.get("dtype", REFERENCE_DTYPE)


def per_length(summary: dict) -> list[str]:
    """The per-cell tables of every prompt length, one dtype after the other (float32 first)."""
    rows = summary["cells"]
    axis = any(row_dtype(r) != REFERENCE_DTYPE for r in rows)
    lines = []
    for n in sorted({r["prompt_len"] for r in rows}):
        lines += [f"## Prompt length {n}", ""]
        for dtype in (d for d in DTYPES if any(row_dtype(r) == d and r["prompt_len"] == n for r in rows)):
            sub = [r for r in rows if row_dtype(r) == dtype]
            baseline = next((b for b in summary["baselines"] if b["available"] and b["prompt_len"] == n
                             and b.get("dtype", REFERENCE_DTYPE) == dtype), None)
            named = dtype if axis else None
            for phase in PHASES:
                fastest = fastest_by_ranks(summary["rankings"], n, phase, dtype)
                lines += phase_tables(sub, n, phase, fastest, baseline, named)
            lines += scaling_tables(sub, n, named)
    return lines
