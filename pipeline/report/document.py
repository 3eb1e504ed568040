"""results/report.md from the summary records: the answers first, then the figures, the per-cell
tables and the sections across cells; configuration, equations and provenance in appendices last."""

from __future__ import annotations

from pathlib import Path

from pipeline.cells import REFERENCE_DTYPE
from pipeline.report import (
    answers,
    appendix,
    comparisons,
    dtypes,
    findings,
    long_context,
    resources,
    tables,
    verify,
)
from pipeline.report import baselines as hf
from pipeline.report import costmodel as costmodel_report

TITLE = "# Qwen3 on CPUs: parallel strategies x attention algorithms"
PARTIAL = (
    "> **Partial report.** The workflow run failed (see the Cells table); this report was built from the "
    "cells that exist, with the verification computed here. The next `snakemake report` reruns what is "
    "missing and rebuilds it."
)


def opening(summary: dict) -> list[str]:
    measured = sum(r["status"] == "ok" for r in summary["cells"])
    lines = [
        TITLE,
        "",
        f"Generated {summary['generated']} by `python -m pipeline report` from {measured} bench JSON files "
        "(results/runs/); every number below is computed from them and is also in results/summary.json. "
        "Do not edit by hand.",
        "",
    ]
    return lines + ([PARTIAL, ""] if summary["partial"] else [])


def context_lines(summary: dict) -> list[str]:
    """Under the answers: where they were measured, and which cells are not in them."""
    m, rows = summary["machine"], summary["cells"]
    if m is None:
        return []
    when = f", {m['measured_from']} … {m['measured_to']}" if m["measured_from"] else ""
    ok = sum(r["status"] == "ok" for r in rows)
    missing = [r["cell"] for r in rows if r["status"] == "missing"]
    na = sum(r["status"] == "n/a" for r in rows)
    text = f"Measured on {appendix.machine_line(m)}{when}; {ok} of {len(rows)} cells measured"
    text += (f"; missing: {', '.join(missing)}" if missing else "") + (f"; {na} not applicable" if na else "")
    lines = [text + " (see Cells).", ""]
    if m["oversubscribed_cells"]:
        lines += [
            "† marks oversubscribed cells: more ranks x threads than the machine's cores, so ranks share "
            "cores and their times include that contention.",
            "",
        ]
    return lines


def figure_lines(figures: dict) -> list[str]:
    per_length = figures.get("per_length", [])
    if not per_length:
        return []
    lines = ["## Figures", ""]
    for f in per_length:
        lines += [
            f"Prompt length {f['prompt_len']}:",
            "",
            *[f"![{Path(p).stem}]({p})" for p in f["files"]],
            "",
        ]
    return lines


def verification_lines(result: dict | None) -> list[str]:
    lines = ["## Verification", ""]
    if result is None:
        return lines + ["No cell to verify.", ""]
    bad = [c["cell"] for c in result["cells"] if not c["ok"]]
    dtypes = list(verify.by_dtype(result))
    if dtypes == [REFERENCE_DTYPE]:
        rule = (
            "Every cell against the single-rank reference of its prompt length (head-wise + standard on 1 "
            f"rank when measured): greedy tokens must be identical, logits within {result['atol']:g} "
            "(absolute; first 8 logits after the prefill and at the last decode step), the logits row's L2 "
            f"norm within {result['rtol']:g} (relative)."
        )
    else:
        rule = (
            "Every cell against the single-rank reference of its prompt length and dtype (head-wise + "
            "standard on 1 rank when measured): greedy tokens must be identical, and the first 8 logits "
            "after the prefill and at the last decode step, and the logits row's L2 norm, within the "
            "dtype's tolerance (stated above its table; pipeline/report/verify.py gives the measurement "
            "behind each). A bf16 or int8 cell's tokens may part from its reference's only at a near-tie: "
            "a step where the reference's top-1 margin is under twice the logits tolerance, so rounding "
            "alone can swap its two best tokens; the logits after that step are not compared. A "
            "low-precision cell's distance from float32 is its bench's teacher-forced "
            "comparison with the float32 export over the same tokens (pipeline/study/lowprec.py): the "
            "logits' normalised MSE (llama.cpp's test-llama-archs fails a model above 1e-4), the KL "
            "divergence of float32's next-token distribution from its own, mean and largest step, and the "
            "share of steps whose top-1 token is float32's; stated, not judged."
        )
    return lines + [
        rule,
        "",
        f"**All {len(result['cells'])} measured cells match.**"
        if not bad
        else f"**{len(bad)} cells do NOT match: {', '.join(bad)}.**",
        "",
        *verify.render_table(result),
        "",
    ]


def render(summary: dict, comparison_docs: list[dict]) -> str:
    """The report's markdown: rendered from `summary` (and the comparisons' own documents) only."""
    lines = opening(summary) + answers.first_screen(summary["answers"]) + context_lines(summary)
    lines += dtypes.lines(summary.get("dtypes"))
    lines += figure_lines(summary["figures"]) + tables.per_length(summary)
    lines += tables.status_lines(summary["cells"]) + verification_lines(summary["verification"])
    lines += findings.lines(summary) if summary["machine"] else []
    lines += hf.findings(summary["baselines"]) + comparisons.section(comparison_docs)
    lines += long_context.lines(summary) + resources.communication_lines(summary["communication"])
    lines += resources.roofline_lines(summary["roofline"]) + resources.memory_lines(summary["memory"])
    lines += resources.placement_lines(summary.get("placement", []))
    lines += costmodel_report.lines(summary["costmodel"])
    lines += appendix.configuration_lines(summary["workflow_config"])
    lines += appendix.equations_lines(summary["costmodel"]) + appendix.provenance_lines(summary["machine"])
    return "\n".join(lines).rstrip() + "\n"
