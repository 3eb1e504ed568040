"""Where the time and memory go, per cell: compute against communication, the roofline (achieved rate
over the ceilings measured in the same run) and the memory of every rank."""

from __future__ import annotations

import statistics

from pipeline.report.fmt import PHASES, flatten, fnum, fval, is_number, pct, table
from pipeline.report.load import Cell

DISTURBED = 0.5  # a ceiling under half the median of all cells' was measured on a busy machine


def communication(cells: list[Cell]) -> dict:
    """Per cell and phase: compute and MPI ms of the slowest rank, the MPI share, bytes sent per token."""
    rows = []
    for c in cells:
        if not (c.run and any("comm_s" in c.run[p] for p in PHASES)):
            continue
        row = {"cell": c.name}
        for phase in PHASES:
            ph = c.run[phase]
            comm, comp = ph.get("comm_s"), ph.get("compute_s")
            row.update(
                {
                    f"{phase}_compute_ms": 1e3 * comp if comp is not None else None,
                    f"{phase}_comm_ms": 1e3 * comm if comm is not None else None,
                    f"{phase}_comm_share": comm / ph["median_s"]
                    if comm is not None and ph["median_s"]
                    else None,
                    f"{phase}_bytes_sent_per_token": ph.get("bytes_sent_per_token"),
                    f"{phase}_transfer_ms": 1e3 * ph["transfer_s"] if "transfer_s" in ph else None,
                    f"{phase}_wait_ms": 1e3 * ph["wait_s"] if "wait_s" in ph else None,
                    f"{phase}_per_rank": ph.get("per_rank"),
                }
            )
        row["hosts"] = sorted(set(c.run.get("environment", {}).get("hosts") or []))
        rows.append(row)
    extra = [{"cell": c.name, **flatten(c.run["comm"])} for c in cells if c.run and c.run.get("comm")]
    return {"cells": rows, "measurements": extra}


def roofline(cells: list[Cell]) -> dict:
    """Per cell: prefill GFLOP/s and decode GB/s against the GEMM and streaming ceilings of its run."""
    measured = [c for c in cells if c.run and c.run.get("roofline")]
    typical = {}
    for key in ("gemm_gflops", "gemv_gb_s", "stream_gb_s"):
        values = [c.run["roofline"][key] for c in measured if is_number(c.run["roofline"].get(key))]
        if values:
            typical[key] = statistics.median(values)
    rows, disturbed = [], []
    for c in measured:
        r = c.run["roofline"]
        best = r.get("ceilings") or {}
        if any(is_number(r.get(k)) and r[k] < DISTURBED * t for k, t in typical.items()):
            disturbed.append(c.name)
        rows.append(
            {
                "cell": c.name,
                "oversubscribed": bool(c.run.get("environment", {}).get("oversubscribed")),
                **{
                    k: r.get(k)
                    for k in (
                        "prefill_gflops",
                        "gemm_gflops",
                        "prefill_fraction",
                        "decode_gb_s",
                        "gemv_gb_s",
                        "decode_fraction",
                        "stream_gb_s",  # the paired read of the weights (absent from older runs)
                        "stream_gb_s_best",
                        "gemv_decode_fraction",
                        "decode_fraction_in_order",  # the layout's own read (absent from older runs)
                    )
                },
                "gemm_gflops_best": best.get("gemm_gflops_best"),
                "gemv_gb_s_best": best.get("gemv_gb_s_best"),
            }
        )
    return {"cells": rows, "typical_ceilings": typical, "disturbed": disturbed}


def memory(cells: list[Cell]) -> list[dict]:
    """Per cell: every rank's peak RSS and private (anonymous) memory, the largest attention scratch."""
    out = []
    for c in cells:
        mem = c.run.get("memory", {}) if c.run else {}
        if not mem.get("peak_rss_mb"):
            continue
        scratch = mem.get("attention_scratch_mb")
        out.append(
            {
                "cell": c.name,
                "peak_rss_mb": mem["peak_rss_mb"],
                "peak_rss_mb_max": max(mem["peak_rss_mb"]),
                "anon_mb": mem.get("anon_mb"),
                "anon_huge_mb": mem.get("anon_huge_mb"),
                "attention_scratch_mb_max": max(scratch) if scratch else None,
                "weights_mb": mem.get("weights_mb"),
            }
        )
    return out


def placement(cells: list[Cell]) -> list[dict]:
    """Per cell: hosts, each rank's CPUs, the ranks that shared CPUs, and oversubscription."""
    rows = []
    for c in cells:
        placed = (c.run or {}).get("placement")
        if not placed:
            continue
        rows.append({"cell": c.name, "hosts": sorted({r["host"] for r in placed["ranks"]}),
                     "rank_cpus": [r["cpus"] for r in placed["ranks"]],
                     "sharing_cpus": placed["sharing_cpus"],
                     "oversubscribed": bool(c.run.get("environment", {}).get("oversubscribed"))})
    return rows


def placement_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    body = [[r["cell"], ", ".join(r["hosts"]),
             "; ".join(f"r{i}: {','.join(map(str, cpus))}" for i, cpus in enumerate(r["rank_cpus"])),
             ", ".join(f"r{a}+r{b}" for a, b in r["sharing_cpus"]) or "none",
             "yes" if r["oversubscribed"] else "no"] for r in rows]
    return ["## Placement", "",
            "Where each rank could run (its CPU affinity mask); ranks whose masks overlap on one host share "
            "cores; oversubscribed: more ranks x threads than the machine's cores.", "",
            *table(["cell", "hosts", "CPUs per rank", "ranks sharing CPUs", "oversubscribed"], body), ""]


def records(cells: list[Cell]) -> dict:
    return {"communication": communication(cells), "roofline": roofline(cells), "memory": memory(cells),
            "placement": placement(cells)}


def communication_lines(rec: dict) -> list[str]:
    if not rec["cells"]:
        return []
    keys = ("compute_ms", "comm_ms", "comm_share", "bytes_sent_per_token")
    names = ("compute ms", "comm ms", "comm share", "bytes sent/token/rank")
    head = ["cell"] + [f"{p} {k}" for p in PHASES for k in names]
    body = [
        [
            r["cell"],
            *[pct(r[f"{p}_{k}"]) if k == "comm_share" else fnum(r[f"{p}_{k}"]) for p in PHASES for k in keys],
        ]
        for r in rec["cells"]
    ]
    lines = [
        "## Compute and communication",
        "",
        "Median time split into compute and communication (MPI calls) for the slowest rank, and the "
        "bytes each rank sends per token.",
        "",
        *table(head, body),
        "",
    ]
    if rec["measurements"]:
        cols = sorted({k for m in rec["measurements"] for k in m if k != "cell"})
        lines += [
            "Communication measurements:",
            "",
            *table(
                ["cell", *cols],
                [[m["cell"], *[fval(m.get(k, "—")) for k in cols]] for m in rec["measurements"]],
            ),
            "",
        ]
    return lines + arrival_lines(rec["cells"])


def per_rank_text(split: dict | None) -> str:
    """'r0 a / b / c; r1 ...': each rank's compute / transfer / waiting ms."""
    if not split:
        return "—"
    parts = zip(split["compute_s"], split["transfer_s"], split["wait_s"], strict=True)
    return "; ".join(f"r{r} " + " / ".join(fnum(1e3 * v) for v in ms) for r, ms in enumerate(parts))


def arrival_lines(rows: list[dict]) -> list[str]:
    """Time inside MPI split by arrival: transfer once every rank is in, waiting for the last one."""
    rows = [r for r in rows if any(r.get(f"{p}_transfer_ms") is not None for p in PHASES)]
    if not rows:
        return []
    head = ["cell", "hosts", *[f"{p} {k}" for p in PHASES for k in ("transfer ms", "waiting ms")],
            "decode per rank: compute / transfer / waiting ms"]
    body = [[r["cell"], ", ".join(r["hosts"]) or "—",
             *[fnum(r[f"{p}_{k}"]) for p in PHASES for k in ("transfer_ms", "wait_ms")],
             per_rank_text(r["decode_per_rank"])] for r in rows]
    crossed = [r["cell"] for r in rows if len(r["hosts"]) > 1]
    return [
        "Inside MPI, split by when the ranks arrived: transfer (after the last rank arrived) and waiting "
        "for the slowest rank (imbalance), the most of any rank; then each rank's own split of decode. "
        + (f"Cells whose ranks ran on more than one host (crossed the network): {', '.join(crossed)}."
           if crossed else "Every cell ran on one host."),
        "",
        *table(head, body),
        "",
    ]


def with_best(value: object, best: object) -> str:
    return fnum(value) + (f" (best {fnum(best)})" if is_number(best) else "")


def roofline_lines(rec: dict) -> list[str]:
    if not rec["cells"]:
        return []
    head = [
        "cell",
        "prefill GFLOP/s",
        "GEMM ceiling GFLOP/s",
        "prefill % of ceiling",
        "decode GB/s",
        "streaming ceiling GB/s",
        "decode % of ceiling",
        "decode % of its layout's read",
        "NumPy GEMV GB/s",
    ]
    body = [
        [
            r["cell"] + (" †" if r["oversubscribed"] else ""),
            fnum(r["prefill_gflops"]),
            with_best(r["gemm_gflops"], r["gemm_gflops_best"]),
            pct(r["prefill_fraction"]),
            fnum(r["decode_gb_s"]),
            with_best(r["stream_gb_s"], r["stream_gb_s_best"]) if is_number(r.get("stream_gb_s"))
            else with_best(r["gemv_gb_s"], r["gemv_gb_s_best"]),
            pct(r["decode_fraction"]),
            pct(r.get("decode_fraction_in_order")),
            with_best(r["gemv_gb_s"], r["gemv_gb_s_best"]),
        ]
        for r in rec["cells"]
    ]
    lines = [
        "## Roofline",
        "",
        "Ceilings measured in the same run with the job's cores. Prefill: NumPy's float32 GEMM at the "
        "model's prefill shapes (median; best repeat in brackets), NumPy's (OpenBLAS) rate, not the "
        "hardware's peak: above 100% our kernels compute faster than NumPy's on the same shapes. "
        "Decode: every rank reads its own weights' bytes with its threads, all ranks at once, after "
        "every 8th decode step of each timed iteration (ext.ops.StreamSet: one OpenMP region over "
        "every array, nothing but loads); the "
        "decode % is the median over iterations of the iteration's decode rate over its reads' rate "
        "(median; fastest iteration's reads in brackets), so both are measured in the same seconds. "
        "The read ceiling is the node's: under sequence every rank reads a whole copy and under layer "
        "the stages read at once where decode runs them in turn, so those cells show what the layout "
        "leaves of the bandwidth. The layout's read is the same bytes read in a decode step's order: "
        "each pipeline stage reads its layers in turn while the others wait, then all ranks their "
        "lm_head rows at once (without stages, the node's read itself); its % is the timed iteration's "
        "steps' worth of those reads over its decode time (median over iterations; the KV cache is left "
        "out, so it errs low), how close the engine comes to what its layout allows. "
        "Prefill GFLOP/s = the model's FLOPs of the prompt / prefill time; "
        "decode GB/s = the weights and KV cache read by the decode steps / decode time "
        "(study/roofline.py). The last column is NumPy's GEMV streaming 512 MB, measured after the cell.",
        "",
        *table(head, body),
        "",
    ]
    if rec["disturbed"]:
        lines += [
            "Ceilings below half the median of all cells (the machine was busy while they were measured, "
            "so these cells' fractions are not trustworthy): " + ", ".join(rec["disturbed"]) + ".",
            "",
        ]
    return lines


def memory_lines(recs: list[dict]) -> list[str]:
    if not recs:
        return []
    anon = any(r["anon_mb"] for r in recs)
    huge = anon and any(r.get("anon_huge_mb") for r in recs)
    scratch = any(r["attention_scratch_mb_max"] for r in recs)
    weights = any(r.get("weights_mb") for r in recs)
    head = (
        ["cell", "peak RSS max MB", "peak RSS per rank MB"]
        + (["weights per rank MB"] if weights else [])
        + (["private (anon) per rank MB"] if anon else [])
        + (["of it in 2 MiB pages MB"] if huge else [])
        + (["attention working memory MB (largest rank)"] if scratch else [])
    )
    body = []
    for r in recs:
        row = [r["cell"], fnum(r["peak_rss_mb_max"]), ", ".join(fnum(x) for x in r["peak_rss_mb"])]
        if weights:
            row.append(", ".join(fnum(x) for x in r.get("weights_mb") or []) or "—")
        if anon:
            row.append(", ".join(fnum(x) for x in r["anon_mb"] or []) or "—")
        if huge:
            row.append(", ".join(fnum(x) for x in r.get("anon_huge_mb") or []) or "—")
        if scratch:
            row.append(fnum(r["attention_scratch_mb_max"], 2))
        body.append(row)
    text = (
        "Peak resident set size per rank (weights are memory-mapped and shared through the page cache, so "
        "they count in every rank's RSS"
        + ("; weights per rank: the shards of the layers it runs and its lm_head rows, what a layout "
           "divides" if weights else "")
        + ")"
        + (
            "; the private anonymous memory (KV cache, activations, buffers) is what each rank adds"
            + ("; of it in 2 MiB pages: the decode stack's bf16/int8 row copies (read every step) and "
               "numpy's buffers of 4 MiB and more" if huge else "")
            + "."
            if anon
            else "."
        )
    )
    if scratch:
        text += (
            " Attention working memory: the most one attention call held (standard: the whole heads x "
            "queries x keys score tensor; online_softmax: one block of scores per thread)."
        )
    return ["## Memory", "", text, "", *table(head, body), ""]
