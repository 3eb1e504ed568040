"""Hold every benchmark cell's outputs against the single-rank reference cell.

    python -m pipeline verify --runs results/runs/*.json --atol 1e-3 --rtol 1e-4 \
        --out-md results/verification.md --out-json results/verification.json

The reference, per (prompt length, gen length): the 1-rank cell, preferring head-wise over
sequence and standard over online_softmax (the plainest path: one rank, no communication,
the textbook softmax). Every cell, including the other 1-rank cells, is compared with it, so
one table answers "do all strategies, algorithms and rank counts compute the same thing":
  - the prompt token ids are identical (otherwise the comparison is meaningless);
  - the greedy tokens are identical, exactly;
  - the logits digests (first 8 logits after the prefill and at the last decode step) differ
    by at most `atol`, their L2 norms (the whole vocabulary row) by at most `rtol` relatively.
A mismatch exits with status 1 and names the cells; the tables are written first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from model_export.atomic import write_text_atomic
from pipeline.cells import CellId

SCHEMA = Path(__file__).parents[1] / "study" / "schemas" / "bench.schema.json"


class RunError(ValueError):
    """A bench JSON that cannot be used; the message names the file."""


def load_run(path: str | Path) -> dict:
    """One bench JSON, checked against pipeline/study/schemas/bench.schema.json when it exists."""
    path = Path(path)
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: cannot read bench JSON ({e})") from None
    if SCHEMA.exists():
        import jsonschema

        try:
            jsonschema.validate(run, json.loads(SCHEMA.read_text()))
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
            raise RunError(f"{path}: does not match {SCHEMA.name} at {where}: {e.message}") from None
    for key in ("cell", "output", "prefill", "decode"):
        if not isinstance(run.get(key), dict):
            raise RunError(f"{path}: missing {key!r} section")
    return run


def load_runs(paths: list[str | Path]) -> dict[str, dict]:
    """Runs by cell name; two files for one cell is an error."""
    runs: dict[str, dict] = {}
    where: dict[str, Path] = {}
    for path in sorted(Path(p) for p in paths):
        run = load_run(path)
        name = CellId.of_run(run).name
        if name in runs:
            raise RunError(f"{path}: cell {name} is also in {where[name]}")
        runs[name], where[name] = run, path
    return runs


def reference_key(run: dict) -> tuple:
    c = run["cell"]
    return (c["parallel_strategy"] != "headwise", c["attention_algo"] != "standard", CellId.of_run(run).name)


def references(runs: dict[str, dict]) -> dict[tuple[int, int], str]:
    """(prompt_len, gen_len) -> name of its reference cell."""
    refs: dict[tuple[int, int], str] = {}
    for name, run in sorted(runs.items(), key=lambda item: reference_key(item[1])):
        c = run["cell"]
        if c["nranks"] == 1:
            refs.setdefault((c["prompt_len"], c["gen_len"]), name)
    return refs


def max_abs_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        return math.inf
    pairs = zip(a, b, strict=True)
    return max(abs(x - y) if math.isfinite(x) and math.isfinite(y) else math.inf for x, y in pairs)


def rel_diff(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-30)


def compare(run: dict, ref: dict, atol: float, rtol: float) -> dict:
    """One cell against its reference: every number the verification table shows."""
    out, ref_out = run["output"], ref["output"]
    tokens, ref_tokens = out["greedy_tokens"], ref_out["greedy_tokens"]
    first_diff = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=False)) if a != b), None)
    if first_diff is None and len(tokens) != len(ref_tokens):
        first_diff = min(len(tokens), len(ref_tokens))
    diffs = {
        phase: max_abs_diff(out[phase]["first8"], ref_out[phase]["first8"])
        for phase in ("prefill_logits", "final_logits")
    }
    l2 = max(rel_diff(out[phase]["l2"], ref_out[phase]["l2"]) for phase in ("prefill_logits", "final_logits"))
    same_prompt = out["prompt_ids"] == ref_out["prompt_ids"]
    problems = []
    if not same_prompt:
        problems.append("different prompt token ids")
    if first_diff is not None:
        problems.append(f"greedy tokens differ from step {first_diff}")
    for phase, d in diffs.items():
        if not d <= atol:
            problems.append(f"{phase.split('_')[0]} logits differ by {d:.3g} > atol {atol:g}")
    if not l2 <= rtol:
        problems.append(f"logits L2 norm differs by {l2:.3g} (relative) > rtol {rtol:g}")
    return {
        "cell": CellId.of_run(run).name,
        "reference": CellId.of_run(ref).name,
        "same_prompt": same_prompt,
        "tokens_equal": first_diff is None,
        "first_token_mismatch": first_diff,
        "max_abs_diff_prefill": diffs["prefill_logits"],
        "max_abs_diff_final": diffs["final_logits"],
        "max_abs_diff": max(diffs.values()),
        "l2_rel_diff": l2,
        "ok": not problems,
        "problems": problems,
    }


def unverified(run: dict, problem: str) -> dict:
    nan = math.nan
    return {
        "cell": CellId.of_run(run).name,
        "reference": "—",
        "same_prompt": False,
        "tokens_equal": False,
        "first_token_mismatch": None,
        "max_abs_diff_prefill": nan,
        "max_abs_diff_final": nan,
        "max_abs_diff": nan,
        "l2_rel_diff": nan,
        "ok": False,
        "problems": [problem],
    }


def verify(runs: dict[str, dict], atol: float, rtol: float, strict: bool = True) -> dict:
    """Every run against its reference. A prompt length without a 1-rank cell raises RunError,
    or (strict=False, for a report over a partial matrix) fails just the cells concerned."""
    refs = references(runs)
    cells = []
    for name, run in sorted(runs.items(), key=lambda item: sort_key(item[1])):
        c = run["cell"]
        key = (c["prompt_len"], c["gen_len"])
        if key not in refs:
            problem = f"no 1-rank cell with prompt_len={key[0]} and gen_len={key[1]} to verify against"
            if strict:
                raise RunError(f"{name}: {problem} (the ranks must include 1)")
            cells.append(unverified(run, problem))
            continue
        cells.append(compare(run, runs[refs[key]], atol, rtol))
    return {
        "atol": atol,
        "rtol": rtol,
        "references": sorted(set(refs.values())),
        "ok": all(c["ok"] for c in cells),
        "cells": cells,
    }


def sort_key(run: dict) -> tuple:
    """Matrix order: prompt length, strategy, algorithm, ranks (the plain variants first)."""
    c = run["cell"]
    return (
        c["prompt_len"],
        c["parallel_strategy"] != "headwise",
        c["parallel_strategy"],
        c["attention_algo"] != "standard",
        c["attention_algo"],
        c["nranks"],
    )


def fmt_diff(x: float | str | None) -> str:
    if not isinstance(x, int | float):  # a JSON round trip turns inf into "inf" and nan into None
        return "—" if x is None else str(x)
    return ("—" if math.isnan(x) else "inf") if not math.isfinite(x) else f"{x:.2e}"


def render_table(result: dict) -> list[str]:
    lines = [
        "| cell | reference | tokens equal | max abs diff, prefill logits | max abs diff, final logits "
        "| L2 rel. diff | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        tokens = (
            "yes"
            if c["tokens_equal"]
            else "—"
            if c["first_token_mismatch"] is None
            else f"no (from step {c['first_token_mismatch']})"
        )
        result_text = (
            "reference"
            if c["cell"] == c["reference"]
            else ("ok" if c["ok"] else "**MISMATCH**: " + "; ".join(c["problems"]))
        )
        lines.append(
            f"| {c['cell']} | {c['reference']} | {tokens} | {fmt_diff(c['max_abs_diff_prefill'])} "
            f"| {fmt_diff(c['max_abs_diff_final'])} | {fmt_diff(c['l2_rel_diff'])} | {result_text} |"
        )
    return lines


def render_markdown(result: dict) -> str:
    n = len(result["cells"])
    bad = [c["cell"] for c in result["cells"] if not c["ok"]]
    status = (
        f"All {n} cells match their single-rank reference."
        if not bad
        else f"{len(bad)} of {n} cells do NOT match their reference: {', '.join(bad)}."
    )
    lines = [
        "# Verification",
        "",
        "Generated by `python -m pipeline verify` from the bench JSONs; do not edit.",
        "",
        f"Tolerances: logits |diff| <= {result['atol']:g} (absolute), L2 norm of the logits row "
        f"<= {result['rtol']:g} (relative); greedy tokens must be identical.",
        "",
        status,
        "",
        *render_table(result),
        "",
    ]
    return "\n".join(lines)


def json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", nargs="*", default=[], help="bench JSON files")
    p.add_argument("--runs-dir", help="also every *.json in this directory")
    p.add_argument("--atol", type=float, required=True, help="max absolute logits difference")
    p.add_argument("--rtol", type=float, required=True, help="max relative L2-norm difference")
    p.add_argument("--out-md", required=True, help="verification table (markdown)")
    p.add_argument("--out-json", required=True, help="verification result (JSON)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = list(args.runs)
    if args.runs_dir:
        paths += sorted(str(p) for p in Path(args.runs_dir).glob("*.json"))
    if not paths:
        print("verify: no bench JSON given (--runs / --runs-dir)", file=sys.stderr)
        return 2
    try:
        result = verify(load_runs(paths), args.atol, args.rtol)
    except RunError as e:
        print(f"verify: {e}", file=sys.stderr)
        return 2
    markdown = render_markdown(result)
    for out, text in ((args.out_md, markdown), (args.out_json, json.dumps(json_safe(result), indent=1))):
        write_text_atomic(out, text + "\n")
    print(markdown)
    if not result["ok"]:
        for c in result["cells"]:
            if not c["ok"]:
                print(
                    f"verify: {c['cell']} does not match {c['reference']}: {'; '.join(c['problems'])}",
                    file=sys.stderr,
                )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
