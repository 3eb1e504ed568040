"""Hold every benchmark cell's outputs against the single-rank reference cell of its dtype.

    python -m pipeline verify --runs results/runs/*.json --atol 1e-3 --rtol 1e-4 \
        --out-md results/verification.md --out-json results/verification.json

The reference, per (prompt length, gen length, dtype): the 1-rank cell of that dtype, preferring
head-wise over sequence and standard over online_softmax (the plainest path: one rank, no
communication, the textbook softmax). Every cell, including the other 1-rank cells, is compared
with it, so one table per dtype answers "do all strategies, algorithms and rank counts compute
the same thing":
  - the prompt token ids are identical (otherwise the comparison is meaningless);
  - the greedy tokens are identical, exactly (bf16 and int8: up to the first step where the
    reference's top-1 margin, output.top1_margins, is under twice the logits tolerance: there
    rounding alone can swap the two best tokens, and the logits after it are not compared);
  - the logits digests (first 8 logits after the prefill and at the last decode step) differ
    by at most the dtype's atol, their L2 norms (the whole vocabulary row) by at most its rtol
    relatively (TOLERANCES: float32 takes --atol/--rtol, the others theirs, with the reason).
A low-precision (bf16, int8) cell also carries how far it is from float32 (its bench JSON's
`low_precision` block: NMSE, KL mean/max, top-1 agreement, teacher-forced): stated, not judged,
and "not measured" when the block is absent.
A mismatch exits with status 1 and names the cells; the tables are written first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from model_export.atomic import write_text_atomic
from pipeline.cells import DTYPES, MANIFEST_DTYPES, REFERENCE_DTYPE, CellId

SCHEMA = Path(__file__).parents[1] / "study" / "schemas" / "bench.schema.json"
LOW_PRECISION_KEYS = ("steps", "nmse", "kl_mean", "kl_max", "top1_agreement")


@dataclass(frozen=True)
class Tolerance:
    """How far a cell's logits may be from its dtype's 1-rank reference."""

    atol: float  # max |difference| of the logits digests: absolute, or per unit of scale (scaled)
    rtol: float  # max relative difference of the logits row's L2 norm
    scaled: bool  # atol x max(1, the reference digests' largest |logit|): rounding relative to the value
    reason: str
    # tokens may part where the reference's top-1 margin is under 2 x atol: a layout moves each logit
    # by up to atol, so the gap of the two largest by up to twice that (tests/engine/test_int8.py's rule)
    near_ties: bool = False


# bf16: the weights are the same bits on every layout and products accumulate in float32, but from 8
# rows a product runs on the bf16 units, its input activations rounded to bf16 (2^-9 relative). A
# float32 summation-order difference (a rank's partial sums, the Allreduce) moves an input across a
# bf16 rounding boundary now and then, so layouts differ by bf16 roundings, not float32 ones. Measured
# on the synthetic Qwen3-0.6B (128-token prompt, 32 steps; digests' largest |logit| 1.4), head-wise
# 2 ranks against 1: 3.2e-3 on the digests, 9.1e-3 anywhere in the row (6.4e-3 per unit of scale),
# 7.9e-6 on the L2 norm; sequence and layer 2 ranks <= 1e-6. 1e-2 per unit covers the whole row's;
# a real bug (a shard's wrong block, a missed Allreduce) moves these logits by O(0.1) or more.
# Since one-token bf16 products run on the bf16 units too (ext/gemv.pxd), decode and the lm_head
# round their input activations as well: on that model (32 steps) head-wise 2 ranks then moved the
# prefill digests by 3.0e-3 and the logits row's L2 norm by 3.3e-4 (the lm_head's input rounded
# after the Allreduce), and sequence's decode parts from its reference too: both part at step 7,
# where the reference's margin is 1.2e-3, a near-tie.
BF16_ATOL = 1e-2
# the row's L2 norm: 3.3e-4 at most (above); bugs move it by O(1e-2) or more.
BF16_RTOL = 2e-3
# int8: activations are quantized per token to 8 bits (step max|x| / 127). Under a head-wise level
# o_proj's and down_proj's input scale is taken over a rank's block of heads / features, and elsewhere
# a float32 summation-order difference flips an 8-bit rounding now and then: either way the layouts
# differ by int8 roundings, through every layer. tests/engine/test_int8.py measured 8.0e-3 on tiny
# 4-layer models (INT8_HEADWISE_ACROSS_RANKS = 2e-2 for logits of ~0.65); the 28-layer synthetic
# Qwen3-0.6B (digests' largest |logit| 1.2), 2 ranks against 1, over the steps before the tokens part:
# head-wise 4.0e-2 on the prefill's first 8 logits, 5.3e-2 on any step's, 0.12 anywhere in the row;
# sequence (decode only) 4.6e-2 / 7.8e-2; layer 0. 0.1 per unit covers the whole row's. That is as
# wide as int8 is from float32 on the prefill digests (4.9e-2), so the digests cannot tell the dtypes
# apart (the export-dtype check does); they still catch a layout bug (O(1)). On that random-weight
# model the greedy tokens of head-wise and sequence at 2 ranks part from the 1-rank cell's at steps 6
# and 29, where its top-1 margin (0.017, 0.027) is under those differences: near-ties (Tolerance.
# near_ties), the only place tokens may part; the measured logits of these cells pass as written here.
INT8_ATOL = 1e-1
# the row's L2 norm: measured 9e-4 at most over the 32 steps (head-wise and sequence, 2 ranks).
INT8_RTOL = 2e-3


def tolerances(atol: float, rtol: float) -> dict[str, Tolerance]:
    """Per dtype, written once: float32 takes the configured atol/rtol, the others their own."""
    return {
        "float32": Tolerance(atol, rtol, False, "float32: only summation order differs between layouts"),
        "bf16": Tolerance(BF16_ATOL, BF16_RTOL, True, "bf16 activations: layouts differ by bf16 roundings",
                          True),
        "int8": Tolerance(INT8_ATOL, INT8_RTOL, True, "int8 activations: layouts differ by 8-bit roundings",
                          True),
    }


def logits_scale(ref: dict) -> float:
    """The reference's largest |logit| in its digests (at least 1): what a scaled atol is per unit of."""
    out = ref["output"]
    values = [abs(x) for k in ("prefill_logits", "final_logits") for x in out[k]["first8"]]
    return max([1.0, *(v for v in values if math.isfinite(v))])


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


def group(run: dict) -> tuple[int, int, str]:
    """(prompt_len, gen_len, dtype): the cells one reference is for."""
    return run["cell"]["prompt_len"], run["cell"]["gen_len"], CellId.of_run(run).dtype


def references(runs: dict[str, dict]) -> dict[tuple[int, int, str], str]:
    """(prompt_len, gen_len, dtype) -> name of its reference cell."""
    refs: dict[tuple[int, int, str], str] = {}
    for name, run in sorted(runs.items(), key=lambda item: reference_key(item[1])):
        if run["cell"]["nranks"] == 1:
            refs.setdefault(group(run), name)
    return refs


def export_dtype_problem(run: dict) -> str | None:
    """The export the cell ran must hold the cell's dtype (a workflow mix-up would verify nothing)."""
    stored = MANIFEST_DTYPES.get((run.get("model") or {}).get("dtype"))
    dtype = CellId.of_run(run).dtype
    if stored is not None and stored != dtype:
        return f"the export holds {stored} weights, not the cell's {dtype}"
    return None


def low_precision(run: dict) -> dict | None:
    """A low-precision cell's distance from float32 ({measured: False} without the block); None for
    float32."""
    if not CellId.of_run(run).low_precision:
        return None
    block = run.get("low_precision")
    if not isinstance(block, dict):
        return {"measured": False}
    return {"measured": True, "reference_export": block.get("reference_export"),
            **{k: block.get(k) for k in LOW_PRECISION_KEYS}}


def max_abs_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        return math.inf
    pairs = zip(a, b, strict=True)
    return max(abs(x - y) if math.isfinite(x) and math.isfinite(y) else math.inf for x, y in pairs)


def rel_diff(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-30)


def first_mismatch(tokens: list[int], ref_tokens: list[int]) -> int | None:
    """The first step whose greedy token differs (a shorter list differs where it ends); None: equal."""
    first = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=False)) if a != b), None)
    if first is None and len(tokens) != len(ref_tokens):
        first = min(len(tokens), len(ref_tokens))
    return first


def near_tie(ref_out: dict, step: int | None, threshold: float | None) -> float | None:
    """The reference's top-1 margin at `step` when it is under `threshold` (the tokens may part there
    by rounding alone); None otherwise, or when the reference recorded no margins (runs before them)."""
    margins = ref_out.get("top1_margins") or []
    if step is None or threshold is None or step >= len(margins) or step >= len(ref_out["greedy_tokens"]):
        return None
    return margins[step] if margins[step] < threshold else None


def compare(run: dict, ref: dict, atol: float, rtol: float, near_ties: bool = False) -> dict:
    """One cell against its reference at these (already scaled) tolerances: every number the
    verification table shows. With `near_ties`, greedy tokens that part where the reference's margin
    is under 2 x atol are not a mismatch; the logits after that step are then not compared (their
    context differs), only the prefill's."""
    out, ref_out = run["output"], ref["output"]
    first_diff = first_mismatch(out["greedy_tokens"], ref_out["greedy_tokens"])
    tie = near_tie(ref_out, first_diff, 2 * atol if near_ties else None)
    phases = ("prefill_logits",) if tie is not None else ("prefill_logits", "final_logits")
    diffs = {phase: max_abs_diff(out[phase]["first8"], ref_out[phase]["first8"])
             for phase in ("prefill_logits", "final_logits")}
    l2 = max(rel_diff(out[phase]["l2"], ref_out[phase]["l2"]) for phase in phases)
    same_prompt = out["prompt_ids"] == ref_out["prompt_ids"]
    problems = [p for p in (export_dtype_problem(run),) if p]
    if not same_prompt:
        problems.append("different prompt token ids")
    if first_diff is not None and tie is None:
        problems.append(f"greedy tokens differ from step {first_diff}")
    for phase in phases:
        if not diffs[phase] <= atol:
            problems.append(f"{phase.split('_')[0]} logits differ by {diffs[phase]:.3g} > atol {atol:g}")
    if not l2 <= rtol:
        problems.append(f"logits L2 norm differs by {l2:.3g} (relative) > rtol {rtol:g}")
    return {
        "cell": CellId.of_run(run).name,
        "reference": CellId.of_run(ref).name,
        "dtype": CellId.of_run(run).dtype,
        "same_prompt": same_prompt,
        "tokens_equal": first_diff is None,
        "first_token_mismatch": first_diff,
        "near_tie_margin": tie,  # the reference's margin where the tokens parted by rounding, or None
        "max_abs_diff_prefill": diffs["prefill_logits"],
        "max_abs_diff_final": diffs["final_logits"],
        "final_compared": tie is None,
        "max_abs_diff": max(diffs[phase] for phase in phases),
        "l2_rel_diff": l2,
        "atol": atol,
        "rtol": rtol,
        "low_precision": low_precision(run),
        "ok": not problems,
        "problems": problems,
    }


def unverified(run: dict, problem: str) -> dict:
    nan = math.nan
    return {
        "cell": CellId.of_run(run).name,
        "reference": "—",
        "dtype": CellId.of_run(run).dtype,
        "same_prompt": False,
        "tokens_equal": False,
        "first_token_mismatch": None,
        "near_tie_margin": None,
        "max_abs_diff_prefill": nan,
        "max_abs_diff_final": nan,
        "final_compared": True,
        "max_abs_diff": nan,
        "l2_rel_diff": nan,
        "atol": nan,
        "rtol": nan,
        "low_precision": low_precision(run),
        "ok": False,
        "problems": [problem],
    }


def verify(runs: dict[str, dict], atol: float, rtol: float, strict: bool = True) -> dict:
    """Every run against its dtype's reference at its dtype's tolerance (`atol`/`rtol`: float32's). A
    (prompt length, dtype) without a 1-rank cell raises RunError, or (strict=False, for a report over
    a partial matrix) fails just the cells concerned."""
    refs, tols = references(runs), tolerances(atol, rtol)
    cells = []
    for name, run in sorted(runs.items(), key=lambda item: sort_key(item[1])):
        key = group(run)
        if key not in refs:
            problem = (f"no 1-rank cell with prompt_len={key[0]} and gen_len={key[1]}"
                       + (f" (dtype {key[2]})" if key[2] != REFERENCE_DTYPE else "") + " to verify against")
            if strict:
                raise RunError(f"{name}: {problem} (the ranks must include 1)")
            cells.append(unverified(run, problem))
            continue
        ref, tol = runs[refs[key]], tols[key[2]]
        scale = logits_scale(ref) if tol.scaled else 1.0
        cells.append(compare(run, ref, tol.atol * scale, tol.rtol, tol.near_ties))
    return {
        "atol": atol,
        "rtol": rtol,
        "tolerances": {d: asdict(t) for d, t in tols.items()},
        "references": sorted(set(refs.values())),
        "ok": all(c["ok"] for c in cells),
        "cells": cells,
    }


def sort_key(run: dict) -> tuple:
    """Matrix order: dtype (float32 first), prompt length, strategy, algorithm, ranks (the plain
    variants first)."""
    c = run["cell"]
    return (
        DTYPES.index(CellId.of_run(run).dtype),
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


def cell_dtype(check: dict) -> str:
    """A verification row's dtype (rows written before the dtype axis have none: from the name)."""
    return check.get("dtype") or CellId.parse(check["cell"]).dtype


def by_dtype(result: dict) -> dict[str, list[dict]]:
    """The verification rows per dtype, float32 first."""
    out: dict[str, list[dict]] = {}
    for c in sorted(result["cells"], key=lambda c: DTYPES.index(cell_dtype(c))):
        out.setdefault(cell_dtype(c), []).append(c)
    return out


def tolerance_text(result: dict, dtype: str) -> str:
    """ "logits within 0.01 per unit of the reference's largest |logit| (at least 1), L2 within 0.0001"."""
    tol = (result.get("tolerances") or {}).get(dtype) or {"atol": result["atol"], "rtol": result["rtol"],
                                                           "scaled": False}
    how = " per unit of the reference's largest |logit| (at least 1)" if tol["scaled"] else " (absolute)"
    ties = ("; greedy tokens may part only where the reference's top-1 margin is under 2 x atol (a "
            "near-tie), the logits after it not compared" if tol.get("near_ties") else "")
    return f"logits within {tol['atol']:g}{how}, the L2 norm within {tol['rtol']:g} (relative){ties}"


def low_precision_cells(c: dict) -> list[str]:
    """NMSE, KL mean / max and top-1 agreement against float32, or "not measured"."""
    low = c.get("low_precision")
    if not low or not low.get("measured"):
        return ["not measured"] * 3
    return [fmt_diff(low["nmse"]), f"{fmt_diff(low['kl_mean'])} / {fmt_diff(low['kl_max'])}",
            f"{100 * low['top1_agreement']:.1f}% of {low['steps']}"]


def tokens_text(c: dict) -> str:
    if c["tokens_equal"]:
        return "yes"
    if c["first_token_mismatch"] is None:
        return "—"
    if c.get("near_tie_margin") is not None:
        return (f"part from step {c['first_token_mismatch']}, a near-tie (reference's margin "
                f"{fmt_diff(c['near_tie_margin'])} < 2 x atol)")
    return f"no (from step {c['first_token_mismatch']})"


def table_row(c: dict, extra: bool) -> str:
    tokens = tokens_text(c)
    final = fmt_diff(c["max_abs_diff_final"])
    if not c.get("final_compared", True):
        final += " (after the tokens part: not compared)"
    result_text = (
        "reference"
        if c["cell"] == c["reference"]
        else ("ok" if c["ok"] else "**MISMATCH**: " + "; ".join(c["problems"]))
    )
    cols = [c["cell"], c["reference"], tokens, fmt_diff(c["max_abs_diff_prefill"]), final,
            fmt_diff(c["l2_rel_diff"])]
    if extra:
        cols += [fmt_diff(c.get("atol")), *low_precision_cells(c)]
    return "| " + " | ".join([*cols, result_text]) + " |"


def render_table(result: dict) -> list[str]:
    """One table per dtype (a heading and its tolerance when the result holds more than float32);
    a low-precision dtype's also states its tolerance here and its distance from float32."""
    groups = by_dtype(result)
    lines = []
    for dtype, rows in groups.items():
        extra = dtype != REFERENCE_DTYPE
        head = ["cell", "reference", "tokens equal", "max abs diff, prefill logits",
                "max abs diff, final logits", "L2 rel. diff"]
        if extra:
            head += ["atol here", "NMSE vs float32", "KL vs float32, mean / max", "top-1 = float32"]
        if len(groups) > 1 or extra:
            lines += [f"**{dtype}**: {tolerance_text(result, dtype)}.", ""]
        lines += ["| " + " | ".join([*head, "result"]) + " |", "|" + "---|" * (len(head) + 1),
                  *(table_row(c, extra) for c in rows), ""]
    return lines[:-1]


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
        "Each cell against the 1-rank cell of its dtype; greedy tokens must be identical (bf16 and int8: "
        "up to a near-tie of the reference). Tolerances: "
        + "; ".join(f"{d}: {tolerance_text(result, d)}" for d in by_dtype(result)) + ".",
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
