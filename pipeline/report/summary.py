"""results/summary.json (every record the report renders) and results/summary.csv (one row per cell).

The CSV's row of a cell is also its entry under "cells" in the JSON; its columns depend on what the
bench JSONs hold (roofline and comm blocks are flattened to "roofline.a.b" columns).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from model_export.atomic import write_json_atomic, write_text_atomic
from pipeline.report import answers, appendix, dtypes, findings, long_context, resources
from pipeline.report import baselines as hf
from pipeline.report import costmodel as costmodel_report
from pipeline.report.fmt import PHASES, flatten
from pipeline.report.load import Cell
from pipeline.report.verify import LOW_PRECISION_KEYS, json_safe

SCHEMA_VERSION = 1


def speedups(cells: list[Cell]) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """(cell, phase) -> (speed-up, parallel efficiency) against the same strategy, algorithm and dtype
    at the same prompt length on 1 rank; (None, None) without that 1-rank cell."""
    base = {(c.strategy, c.algo, c.prompt_len, c.dtype): c for c in cells if c.run and c.nranks == 1}
    out = {}
    for c in cells:
        one = base.get((c.strategy, c.algo, c.prompt_len, c.dtype))
        for phase in PHASES:
            if c.run and one:
                s = c.tokens_per_s(phase) / one.tokens_per_s(phase)
                out[(c.name, phase)] = (s, s / c.nranks)
            else:
                out[(c.name, phase)] = (None, None)
    return out


def phase_columns(ph: dict, phase: str) -> dict:
    row = {
        f"{phase}_median_ms": 1e3 * ph["median_s"],
        f"{phase}_min_ms": 1e3 * ph["min_s"],
        f"{phase}_max_ms": 1e3 * ph["max_s"],
        f"{phase}_ms_per_token": ph["ms_per_token"],
        f"{phase}_tokens_per_s": ph["tokens_per_s"],
        f"{phase}_tokens_per_s_min": ph["tokens_per_s_min"],
        f"{phase}_tokens_per_s_max": ph["tokens_per_s_max"],
    }
    for key in ("compute_s", "comm_s"):
        if key in ph:
            row[f"{phase}_{key[:-2]}_ms"] = 1e3 * ph[key]
    if "bytes_sent_per_token" in ph:
        row[f"{phase}_bytes_sent_per_token"] = ph["bytes_sent_per_token"]
    return row


def run_columns(c: Cell, speed: dict) -> dict:
    r = c.run
    cell, env = r["cell"], r.get("environment", {})
    row = {
        "gen_len": cell.get("gen_len"),
        "iters": cell.get("iters"),
        "warmup": cell.get("warmup"),
        "threads_per_rank": cell.get("threads_per_rank"),
        "oversubscribed": env.get("oversubscribed"),
    }
    for phase in PHASES:
        row.update(phase_columns(r[phase], phase))
        s, e = speed[(c.name, phase)]
        row.update({f"{phase}_speedup": s, f"{phase}_efficiency": e})
    for k, v in (r["decode"].get("step_ms") or {}).items():
        row[f"decode_step_{k}_ms"] = v
    row["ttft_ms"] = r.get("ttft_ms")
    for k, v in r.get("seed_metric", {}).items():
        row[f"seed_{k}"] = v
    mem = r.get("memory", {})
    if mem.get("peak_rss_mb"):
        row.update(
            peak_rss_mb_max=max(mem["peak_rss_mb"]),
            peak_rss_mb_per_rank=";".join(f"{x:.1f}" for x in mem["peak_rss_mb"]),
        )
    if mem.get("anon_mb"):
        row["anon_mb_per_rank"] = ";".join(f"{x:.1f}" for x in mem["anon_mb"])
    if "sequence_layout" in cell and c.strategy == "sequence":
        row["sequence_layout"] = cell["sequence_layout"]
    row["model_dtype"] = r.get("model", {}).get("dtype")
    for section in ("roofline", "comm", "implementations"):
        for k, v in flatten(r.get(section) or {}).items():
            row[f"{section}.{k}"] = v
    return row


def check_columns(check: dict) -> dict:
    """The cell's verification: against its dtype's reference, and a low-precision cell's distance
    from float32 (low_precision_measured False: its bench JSON had no such block)."""
    row = {
        "verify_reference": check["reference"],
        "verify_tokens_equal": check["tokens_equal"],
        "verify_max_abs_diff": check["max_abs_diff"],
        "verify_l2_rel_diff": check["l2_rel_diff"],
        "verify_atol": check.get("atol"),
        "verify_first_token_mismatch": check.get("first_token_mismatch"),
        "verify_near_tie_margin": check.get("near_tie_margin"),
        "verify_ok": check["ok"],
    }
    low = check.get("low_precision")
    if low is not None:
        row["low_precision_measured"] = low["measured"]
        row.update({f"low_precision_{k}": low.get(k) for k in LOW_PRECISION_KEYS})
    return row


def cell_rows(cells: list[Cell]) -> list[dict]:
    """One row per cell of the matrix: identity and status, then (measured) every number of its run
    and its verification."""
    speed = speedups(cells)
    rows = []
    for c in cells:
        row = {
            "cell": c.name,
            "status": c.status,
            "reason": c.reason,
            "strategy": c.strategy,
            "algorithm": c.algo,
            "nranks": c.nranks,
            "prompt_len": c.prompt_len,
            "dtype": c.dtype,
        }
        if c.run:
            row.update(run_columns(c, speed))
        if c.check:
            row.update(check_columns(c.check))
        rows.append(row)
    return rows


def csv_text(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
        )
    return out.getvalue()


def write(summary: dict, json_path: str | Path, csv_path: str | Path) -> None:
    """summary.json (NaN as null, infinities as "inf") and the CSV of its cells, each atomically."""
    write_json_atomic(json_path, json_safe(summary))
    write_text_atomic(csv_path, csv_text(summary["cells"]))


def build(
    cells: list[Cell],
    *,
    verification: dict | None,
    baselines: list[dict],
    costmodel: dict | None,
    workflow_config: dict | None,
    comparisons: list[dict],
    figures: dict,
    generated: str,
    partial: bool,
) -> dict:
    """Every finding of the report as records; the markdown is rendered from this alone (and the
    comparison documents, whose section comparisons.py renders)."""
    rows = cell_rows(cells)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated": generated,
        "partial": partial,
        "machine": appendix.machine([c.run for c in cells if c.run]),
        "answers": answers.records(cells),
        "cells": rows,
        "rankings": answers.rankings(cells),
        "verification": verification,
        "findings": findings.records(cells, rows, verification),
        "baselines": hf.records(baselines, cells),
        "comparisons": comparisons,
        "dtypes": dtypes.records(cells, comparisons),
        "long_context": long_context.records(cells),
        **resources.records(cells),
        "costmodel": costmodel_report.records(costmodel, figures.get("costmodel")),
        "figures": figures,
        "workflow_config": workflow_config,
    }
