"""Per dtype: our fastest 1-rank cell, how far the dtype is from float32, and what was measured
back to back beside it (llama.cpp and torch of the same dtype, int8 beside llama.cpp q8_0, each
dtype's 2 ranks x 1 thread against 1 rank x 2 threads, its rates against the ceilings).

records() computes from the Cell records, their verification rows and the comparisons' flat records
(comparisons.records); lines() renders those records only. The paired ratios are the comparison's
(ours over theirs per round, the median of the rounds): ours there is the comparison's own engine
cell, run adjacent in time to theirs, which is not necessarily the matrix's fastest 1-rank cell;
the table says which cell it was. Nothing here is judged against a goal.
"""

from __future__ import annotations

import re

from pipeline.cells import ALGORITHMS, DTYPES, MANIFEST_DTYPES, REFERENCE_DTYPE
from pipeline.report.answers import ranked
from pipeline.report.comparisons import ACCURACY
from pipeline.report.fmt import PHASES, fnum, ratio, table
from pipeline.report.load import Cell, dtype_axis, dtype_groups

BASELINE_KINDS = ("llamacpp", "torch")
# a ranks/ceilings variant: {dtype}_{algo}_np{P}; before the dtype axis {algo}_np{P} (float32)
_VARIANT = re.compile(r"^(?:(?P<dtype>" + "|".join(DTYPES) + r")_)?(?P<algo>" + "|".join(ALGORITHMS)
                      + r")_np(?P<nranks>\d+)$")


def variant_cell(name: str) -> tuple[str, str, int] | None:
    """(dtype, algo, ranks) of an engine variant of the ranks or ceilings comparison; None otherwise."""
    m = _VARIANT.match(name)
    return (m["dtype"] or REFERENCE_DTYPE, m["algo"], int(m["nranks"])) if m else None


def ours_dtype(name: str) -> str | None:
    """The dtype of the baselines comparison's engine variant `ours_{manifest dtype}`."""
    return MANIFEST_DTYPES.get(name.removeprefix("ours_")) if name.startswith("ours_") else None


def best(cells: list[Cell], phase: str) -> dict | None:
    order = [c for c in ranked(cells, phase) if c.nranks == 1]
    if not order:
        return None
    top = order[0]
    return {"cell": top.name, "label": top.label, "tokens_per_s": top.tokens_per_s(phase)}


def low_precision_summary(dtype: str, cells: list[Cell]) -> dict | None:
    """The worst of the dtype's measured cells against float32: the largest NMSE and KL, the lowest
    top-1 agreement; and how many of its cells carried the measures at all (None for float32)."""
    if dtype == REFERENCE_DTYPE:
        return None
    lows = [c.check.get("low_precision") for c in cells if c.run and c.check]
    measured = [x for x in lows if x and x.get("measured")]
    out = {"cells": sum(1 for c in cells if c.run), "cells_measured": len(measured)}
    if measured:
        out.update(nmse_max=max(x["nmse"] for x in measured), kl_mean_max=max(x["kl_mean"] for x in measured),
                   kl_max=max(x["kl_max"] for x in measured),
                   top1_agreement_min=min(x["top1_agreement"] for x in measured),
                   steps_min=min(x["steps"] for x in measured))
    return out


def baseline_rows(comparisons: list[dict]) -> list[dict]:
    """The baselines comparison's rows: each baseline beside our engine variant it was paired with."""
    ours = {r["variant"]: r for r in comparisons if r["comparison"] == "baselines" and r["kind"] != "skipped"}
    rows = []
    for r in comparisons:
        if r["comparison"] != "baselines" or r["kind"] not in BASELINE_KINDS or r["reference"] not in ours:
            continue
        mine = ours[r["reference"]]
        row = {"dtype": ours_dtype(mine["variant"]), "baseline": r["variant"], "baseline_label": r["label"],
               "kind": r["kind"], "ours": mine["variant"], "ours_label": mine["label"],
               "tokens_agree": r.get("tokens_agree"),
               **{f"{k}_{who}": of.get(k) for k in ACCURACY for who, of in (("ours", mine), ("baseline", r))}}
        for phase in PHASES:  # ours over theirs: comparisons.records inverted the rounds' ratios
            row.update({f"{phase}_ours": mine[f"{phase}_median"], f"{phase}_baseline": r[f"{phase}_median"],
                        f"{phase}_ours_over_baseline_rounds": r.get(f"{phase}_ours_over_baseline_rounds", []),
                        f"{phase}_ours_over_baseline": r.get(f"{phase}_ours_over_baseline")})
        rows.append(row)
    return rows


def paired_rows(comparisons: list[dict], name: str) -> list[dict]:
    """Each engine variant of comparison `name` (ranks, ceilings) with a reference: its dtype,
    algorithm, ranks and its ratio over the reference per phase (the median of the rounds)."""
    rows = []
    for r in comparisons:
        cell = variant_cell(r.get("variant", "")) if r["comparison"] == name else None
        if cell and r["reference"]:
            rows.append({"dtype": cell[0], "algo": cell[1], "nranks": cell[2], "variant": r["variant"],
                         "reference": r["reference"],
                         **{f"{ph}_ratio": r[f"{ph}_ratio"] for ph in PHASES},
                         **{f"{ph}_median": r[f"{ph}_median"] for ph in PHASES},
                         "decode_read_fraction": r.get("decode_read_fraction"),
                         "decode_read_fraction_rounds": r.get("decode_read_fraction_rounds", [])})
    return rows


def records(cells: list[Cell], comparisons: list[dict]) -> dict | None:
    """Per dtype of the matrix (float32 first): its fastest 1-rank cells and theirs over float32's, its
    distance from float32, and the back-to-back rows of its dtype; None without a dtype axis or any
    baselines comparison (the float32-only report of before)."""
    baselines = baseline_rows(comparisons)
    if not (dtype_axis(cells) or baselines):
        return None
    paired = [r["prompt_len"] for r in comparisons if r.get("prompt_len")]
    prompt = paired[0] if paired else min((c.prompt_len for c in cells if c.run), default=None)
    at = [c for c in cells if c.prompt_len == prompt]
    groups = dict(dtype_groups(at))
    seen = set(groups) | {r["dtype"] for r in baselines + paired_rows(comparisons, "ranks")
                          + paired_rows(comparisons, "ceilings")}
    out = []
    for dtype in (d for d in DTYPES if d in seen):  # also a dtype only measured back to back
        sub = groups.get(dtype, [])
        out.append({"dtype": dtype, "prompt_len": prompt, "in_matrix": bool(sub),
                    "best_1rank": {ph: best(sub, ph) for ph in PHASES},
                    "low_precision": low_precision_summary(dtype, sub),
                    "cells_verified": sum(bool(c.check and c.check["ok"]) for c in sub if c.run),
                    "cells_measured": sum(1 for c in sub if c.run)})
    f32 = next((r["best_1rank"] for r in out if r["dtype"] == REFERENCE_DTYPE), None)
    for r in out:
        r["best_1rank_over_float32"] = {
            ph: r["best_1rank"][ph]["tokens_per_s"] / f32[ph]["tokens_per_s"]
            if f32 and f32[ph] and r["best_1rank"][ph] and r["dtype"] != REFERENCE_DTYPE else None
            for ph in PHASES}
    skipped = [r["reason"] for r in comparisons if r["comparison"] == "baselines" and r["kind"] == "skipped"]
    return {"dtypes": out, "baselines": baselines, "baselines_skipped": skipped,
            "baselines_measured": any(r["comparison"] == "baselines" for r in comparisons),
            "ranks": paired_rows(comparisons, "ranks"), "ceilings": paired_rows(comparisons, "ceilings")}


def best_text(b: dict | None, in_matrix: bool = True) -> str:
    if b is None:
        return "—" if in_matrix else "— (not in the matrix)"
    return f"{fnum(b['tokens_per_s'])} ({b['label']})"


def sci(x: float | None) -> str:
    return "—" if x is None else f"{x:.2e}"


def dtype_row(r: dict) -> list[str]:
    low = r["low_precision"]
    if low is None:
        measures = ["(reference)"] * 3
    elif not low["cells_measured"]:
        measures = ["not measured"] * 3 if r["in_matrix"] else ["—"] * 3
    else:
        measures = [sci(low["nmse_max"]), f"{sci(low['kl_mean_max'])} / {sci(low['kl_max'])}",
                    f"{100 * low['top1_agreement_min']:.1f}%"]
        if low["cells_measured"] < low["cells"]:
            measures[0] += f" ({low['cells_measured']} of {low['cells']} cells measured)"
    over = r["best_1rank_over_float32"]
    return [r["dtype"], best_text(r["best_1rank"]["prefill"], r["in_matrix"]),
            best_text(r["best_1rank"]["decode"], r["in_matrix"]),
            " / ".join(ratio(over[ph]) for ph in PHASES) if r["dtype"] != REFERENCE_DTYPE else "—",
            *measures, f"{r['cells_verified']} of {r['cells_measured']}" if r["in_matrix"] else "—"]


def baseline_table(rows: list[dict]) -> list[str]:
    head = ["dtype", "ours (paired run)", "baseline", "prefill tok/s: ours / theirs",
            "decode tok/s: ours / theirs", "prefill: ours over theirs", "decode: ours over theirs",
            "greedy tokens: theirs = ours", "NMSE vs float32: ours / theirs",
            "KL vs float32: ours / theirs", "top-1 = float32: ours / theirs"]
    order = sorted(rows, key=lambda r: DTYPES.index(r["dtype"]) if r["dtype"] in DTYPES else len(DTYPES))
    body = [[r["dtype"] or "?", r["ours_label"], r["baseline_label"],
             *(f"{fnum(r[f'{ph}_ours'])} / {fnum(r[f'{ph}_baseline'])}" for ph in PHASES),
             *(rounds_text(r[f"{ph}_ours_over_baseline"], r[f"{ph}_ours_over_baseline_rounds"])
               for ph in PHASES),
             {True: "yes", False: "**no**", None: "—"}[r["tokens_agree"]],
             *(" / ".join(show(r.get(f"{k}_{who}")) for who in ("ours", "baseline"))
               for k, show in (("nmse", sci), ("kl_mean", sci), ("top1_agreement", percent)))]
            for r in order]
    return table(head, body)


def accuracy_note(rows: list[dict]) -> list[str]:
    """What the NMSE/KL/top-1 columns measure, under the table when any row has them."""
    if not any(r.get("nmse_baseline") is not None for r in rows):
        return ["NMSE/KL/top-1: not measured in this comparison (compare baselines --reference-cache).", ""]
    return ["NMSE, KL and top-1 (pipeline.study.lowprec): every program, ours and theirs, against one "
            "float32 run of our engine on the float32 export, each fed that run's greedy tokens (teacher "
            "forcing), so they say how far each one's logits are from float32 where greedy tokens alone "
            "cannot: on random weights the logits are near-flat and a bf16 or int8 run parts from any "
            "other's within a few steps. A float32 baseline's row cross-checks its conversion (GGUF) and "
            "engine against ours.", ""]


def percent(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def rounds_text(median: float | None, rounds: list[float]) -> str:
    if median is None:
        return "—"
    return f"{ratio(median)} ({' / '.join(f'{x:.2f}' for x in rounds)})"


def paired_table(rec: dict) -> list[str]:
    """Per dtype and algorithm: C ranks x 1 thread over 1 x C (ranks), and over the ceilings."""
    keys = sorted({(r["dtype"], r["algo"]) for r in rec["ranks"] + rec["ceilings"]},
                  key=lambda k: (DTYPES.index(k[0]), k[1] != "standard"))
    if not keys:
        return []
    ranks = {(r["dtype"], r["algo"]): r for r in rec["ranks"]}
    ceilings = {(r["dtype"], r["algo"]): r for r in rec["ceilings"]}
    body = []
    for key in keys:
        rk, cl = ranks.get(key), ceilings.get(key)
        body.append([*key, *(ratio(rk[f"{ph}_ratio"]) if rk else "—" for ph in PHASES),
                     *(f"{fnum(cl[f'{ph}_median'])} ({ratio(cl[f'{ph}_ratio'])})" if cl else "—"
                       for ph in PHASES), read_text(cl)])
    p = next((r["nranks"] for r in rec["ranks"]), "C")
    head = ["dtype", "algorithm", f"{p} ranks x 1 over 1 x {p}: prefill", "decode",
            "prefill GFLOP/s (over NumPy's GEMM)", "decode GB/s (over NumPy's GEMV)",
            "decode over its own weight reads"]
    return ["Back to back on the same cores, per dtype (the ranks and ceilings comparisons below). NumPy's "
            "GEMM and GEMV (OpenBLAS, float32) are measured once per round beside the cell; the last column "
            "is the streaming ceiling of the speed goals: the cell's decode rate over the rate at which it "
            "read its own weights' bytes with its threads between its decode steps (ext.ops.StreamSet, "
            "nothing but loads), the median of the rounds, then each round's:", "",
            *table(head, body), ""]


def read_text(row: dict | None) -> str:
    """"86% (84 / 86 / 90)": a ceilings row's decode over its own weight reads, median and rounds."""
    if not row or row.get("decode_read_fraction") is None:
        return "—"
    rounds = " / ".join(f"{100 * x:.0f}" for x in row["decode_read_fraction_rounds"])
    return f"{100 * row['decode_read_fraction']:.0f}% ({rounds})"


def lines(rec: dict | None) -> list[str]:
    """The per-dtype section: our cells, then beside the baselines, then the paired ranks/ceilings."""
    if rec is None:
        return []
    head = ["dtype", "fastest 1-rank cell: prefill tok/s", "decode tok/s", "× float32 (prefill / decode)",
            "NMSE vs float32 (largest)", "KL vs float32, mean / max (largest)", "top-1 = float32 (lowest)",
            "cells verified"]
    prompt = rec["dtypes"][0]["prompt_len"] if rec["dtypes"] else "?"
    out = ["## Per dtype: our cells beside llama.cpp and torch", "",
           f"Prompt {prompt}. Our fastest 1-rank cell of each dtype (from the matrix above), over float32's; "
           "the dtype's worst cell against float32 (see Verification); each cell verified against its own "
           "dtype's 1-rank reference.", "",
           *table(head, [dtype_row(r) for r in rec["dtypes"]]), ""]
    if rec["baselines"]:
        out += ["Each baseline beside our cell of its dtype, run back to back in the same rounds (ours over "
                "theirs: the median of the rounds' ratios, then each round's):", "",
                *baseline_table(rec["baselines"]), "", *accuracy_note(rec["baselines"])]
    elif not rec["baselines_measured"]:
        out += ["No baselines comparison in this run (config comparisons.baselines).", ""]
    out += [f"- Skipped: {line}." for line in rec["baselines_skipped"]]
    out += [""] if rec["baselines_skipped"] else []
    return out + paired_table(rec)
