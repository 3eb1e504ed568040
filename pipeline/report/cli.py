"""Regenerate results/report.md, summary.json, summary.csv and figures/ from the JSONs.

    python -m pipeline report --runs results/runs/*.json --verification results/verification.json \\
        --cells headwise_standard_np1_p128 ... --not-applicable "CELL=reason" ... \\
        --costmodel results/costmodel.json --baseline results/baseline/*.json \\
        --compare results/compare/*.json --workflow-config '{"iters": 3, ...}' \\
        --out-md results/report.md --out-csv results/summary.csv

Every number in the report comes from the JSONs; nothing is typed by hand, and every finding is also in
summary.json (default: beside --out-csv). Cells named by --cells without a JSON are marked missing
(their bench failed or was not run; the log path is given), --not-applicable cells with their reason.
Without --cells the report covers whichever JSONs it is given. Without --verification the verification
is computed here with pipeline.report.verify (the same code, the same tolerances). Figures go to a
`figures/` directory beside the markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from model_export.atomic import write_text_atomic
from pipeline.report import comparisons, document, figures, load, summary, verify
from pipeline.report.costmodel import PREFERRED_ALGO


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="bench JSON files")
    p.add_argument("--runs-dir", help="also every *.json in this directory")
    p.add_argument("--cells", nargs="*", help="every cell of the matrix (missing ones are marked)")
    p.add_argument(
        "--not-applicable",
        nargs="*",
        default=[],
        metavar="CELL=REASON",
        help="cells that cannot run, with the reason",
    )
    p.add_argument("--verification", help="results/verification.json (default: computed here)")
    p.add_argument("--atol", type=float, default=1e-3, help="verify tolerance when computed here")
    p.add_argument("--rtol", type=float, default=1e-4, help="verify tolerance when computed here")
    p.add_argument("--workflow-config", help="the workflow's config as a JSON string")
    p.add_argument("--costmodel", help="cost model predictions (JSON), shown when given and present")
    p.add_argument(
        "--baseline", nargs="*", default=[], help="pipeline.study.baseline results, one per length"
    )
    p.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="FILE",
        help="back-to-back comparison results (results/compare/*.json)",
    )
    p.add_argument("--logs-dir", default="results/logs/bench", help="where the bench logs are")
    p.add_argument("--out-md", required=True, help="the report (figures go to figures/ beside it)")
    p.add_argument("--out-csv", required=True, help="one row per cell")
    p.add_argument("--out-json", help="every finding as records (default: summary.json beside --out-csv)")
    p.add_argument("--partial", action="store_true", help="built after a failed workflow run: say so")
    return p.parse_args(argv)


def read_inputs(args: argparse.Namespace) -> dict:
    """Every input, read and checked before anything is drawn or written; ValueError names the culprit."""
    paths = list(args.runs)
    if args.runs_dir:
        paths += sorted(str(p) for p in Path(args.runs_dir).glob("*.json"))
    runs = verify.load_runs(paths)
    if args.cells:
        wanted = set(args.cells)
        runs = {k: v for k, v in runs.items() if k in wanted}
    cells = load.collect(runs, args.cells, load.parse_not_applicable(args.not_applicable), args.logs_dir)
    verification = load.load_verification(args.verification, runs, args.atol, args.rtol)
    load.attach_checks(cells, verification)
    return {
        "runs": runs,
        "cells": cells,
        "verification": verification,
        "baselines": load.load_baselines(args.baseline),
        "costmodel": load.load_costmodel(args.costmodel),
        "workflow_config": load.load_workflow_config(args.workflow_config),
        "compare": comparisons.load(args.compare),
    }


def draw_figures(cells: list[load.Cell], costmodel: dict | None, out_md: Path) -> dict:
    """The figures beside the report; their paths relative to it."""
    fig_dir = out_md.parent / "figures"
    per_length = []
    for n in sorted({c.prompt_len for c in cells}):
        sub = [c for c in cells if c.prompt_len == n]
        figures.throughput_vs_ranks(sub, n, fig_dir / f"throughput_p{n}.png")
        figures.cells_bars(sub, n, fig_dir / f"cells_p{n}.png")
        per_length.append(
            {"prompt_len": n, "files": [f"figures/throughput_p{n}.png", f"figures/cells_p{n}.png"]}
        )
    curves = None
    if costmodel and costmodel.get("groups"):
        figures.costmodel_curves(costmodel["groups"][0], cells, fig_dir / "costmodel.png", PREFERRED_ALGO)
        curves = "figures/costmodel.png"
    return {"per_length": per_length, "costmodel": curves}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        inputs = read_inputs(args)
    except (verify.RunError, ValueError, OSError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    cells = inputs["cells"]
    out_md = Path(args.out_md)
    out_json = Path(args.out_json) if args.out_json else Path(args.out_csv).parent / "summary.json"
    found = summary.build(
        cells,
        verification=inputs["verification"],
        baselines=inputs["baselines"],
        costmodel=inputs["costmodel"],
        workflow_config=inputs["workflow_config"],
        comparisons=comparisons.records(inputs["compare"]),
        figures=draw_figures(cells, inputs["costmodel"], out_md),
        generated=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        partial=args.partial,
    )
    summary.write(found, out_json, args.out_csv)
    write_text_atomic(out_md, document.render(found, inputs["compare"]))
    missing = [c.name for c in cells if c.status == "missing"]
    print(
        f"report: {len(inputs['runs'])} cells -> {out_md}, {out_json}, {args.out_csv}, "
        f"{out_md.parent}/figures/" + (f"; missing: {', '.join(missing)}" if missing else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
