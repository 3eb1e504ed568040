"""float32 against bf16 weights, measured back to back: the bf16 decode speed-up.

    python -m pipeline.study.dtype_compare --exports EXPORT_F32 EXPORT_BF16 --ranks 1 2 --threads 2 \
        --prompt-len 128 --gen-len 32 --iters 3 --warmup 1 --rounds 3 --out results/dtype_compare.json

Both exports hold the same model (the synthetic and Hugging Face Qwen3 checkpoints are bf16, so
the float32 export widens them exactly). For each rank count, `rounds` rounds run pipeline.study.bench
(head-wise, online_softmax) on each export in turn, the order reversed every other round (ABBA),
so load from other processes falls on both alike; each dtype's figure is the median over its
rounds of the bench medians. The speed-up is bf16 over float32 at the same ranks and threads,
taken within each round (the two runs adjacent in time), median over the rounds; the greedy
tokens of the two must be the same. The bench JSONs are kept beside the output, in `<out stem>/`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from model_export.atomic import write_json_atomic
from model_export.reader import open_export
from pipeline.study.alternate import add_run_options, in_turn, paired_ratios, run_bench, summary

SCHEMA_VERSION = 1
STRATEGY, ALGO = "headwise", "online_softmax"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exports", nargs="+", required=True, help="export directories, one per dtype")
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    p.add_argument("--threads", type=int, required=True, help="cores for each job (all its ranks)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.threads < 1 or any(n < 1 for n in args.ranks):
        p.error("--rounds, --threads and --ranks must be >= 1")
    return args


def dtypes_of(exports: list[str]) -> dict[str, str]:
    """{dtype: export dir}, checked up front: readable exports of one model, distinct dtypes."""
    found, configs = {}, set()
    for path in exports:
        export = open_export(path)  # raises a clear error for a missing or malformed export
        if export.dtype_name in found:
            raise ValueError(f"two exports hold {export.dtype_name}: {found[export.dtype_name]}, {path}")
        found[export.dtype_name] = path
        configs.add(json.dumps(export.cfg.to_dict(), sort_keys=True))
    if len(configs) > 1:
        raise ValueError(f"the exports hold different models: {exports}")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        exports = dtypes_of(args.exports)
    except Exception as e:  # noqa: BLE001  (one clear line before any heavy work)
        print(f"error: {e}", file=sys.stderr)
        return 2
    raw = Path(args.out).with_suffix("")
    raw.mkdir(parents=True, exist_ok=True)
    groups = []
    for nranks in args.ranks:
        runs: dict[str, list[dict]] = {dtype: [] for dtype in exports}
        for rnd in range(args.rounds):
            for dtype, export in in_turn(exports.items(), rnd):
                out = raw / f"{STRATEGY}_{ALGO}_np{nranks}_t{args.threads}_{dtype}_r{rnd}.json"
                runs[dtype].append(run_bench(
                    args.mpi, nranks, args.threads, export, STRATEGY, ALGO, args.prompt_len, args.gen_len,
                    args.iters, args.warmup, out, args.timeout, tag="dtype_compare"))
        by_dtype = {dtype: summary(r) for dtype, r in runs.items()}
        group = {"nranks": nranks, "threads": args.threads, "dtypes": by_dtype}
        if {"float32", "bfloat16"} <= by_dtype.keys():
            f32, bf16 = runs["float32"], runs["bfloat16"]
            group["decode_speedup_rounds"] = paired_ratios(f32, bf16, "decode")
            group["prefill_ratio_rounds"] = paired_ratios(f32, bf16, "prefill")
            group["decode_speedup"] = statistics.median(group["decode_speedup_rounds"])
            group["prefill_ratio"] = statistics.median(group["prefill_ratio_rounds"])
            group["same_greedy_tokens"] = all(
                r["output"]["greedy_tokens"] == f32[0]["output"]["greedy_tokens"] for r in f32 + bf16)
        groups.append(group)
        print(f"[dtype_compare] P={nranks}: " + ", ".join(
            f"{d} decode {s['decode_tokens_per_s']:.2f} tok/s" for d, s in by_dtype.items())
            + (f", bf16 x{group['decode_speedup']:.2f}" if "decode_speedup" in group else ""),
            file=sys.stderr, flush=True)
    write_json_atomic(args.out, {
        "schema_version": SCHEMA_VERSION, "strategy": STRATEGY, "algo": ALGO,
        "prompt_len": args.prompt_len, "gen_len": args.gen_len, "iters": args.iters,
        "rounds": args.rounds, "groups": groups})
    return 0


if __name__ == "__main__":
    sys.exit(main())
