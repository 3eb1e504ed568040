"""Ranks against threads on the same cores, measured back to back: head-wise on C ranks x 1
thread against 1 rank x C threads.

    python -m pipeline.study.rank_compare --export EXPORT --cores 2 --algos standard online_softmax \
        --prompt-len 128 --gen-len 32 --iters 3 --warmup 1 --rounds 3 --out results/rank_compare.json

The matrix's cells run minutes apart, and on a shared 2-vCPU machine the load in between moves a
cell by 10% or more; a ratio of two such cells says as much about the load as about MPI. Here,
for each attention algorithm, each round runs pipeline.study.bench once per layout, the two adjacent in
time (1 x C then C x 1, the order reversed every other round so that a drift favours neither).
The ratio of a round is C x 1 over 1 x C in tokens/s; the figure is the median over rounds. The
greedy tokens of the two layouts must be the same. The bench JSONs are kept in `<out stem>/`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from model_export.atomic import write_json_atomic
from model_export.reader import open_export
from pipeline.engine.strategies import ALGORITHMS, STRATEGIES
from pipeline.study.alternate import add_run_options, in_turn, paired_ratios, run_bench, summary

SCHEMA_VERSION = 1
STRATEGY = "headwise"
PHASES = ("prefill", "decode")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="export directory (model_export.reader)")
    p.add_argument("--cores", type=int, required=True, help="C: 1 rank x C threads against C ranks x 1")
    p.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    add_run_options(p)
    args = p.parse_args(argv)
    if args.cores < 2 or args.rounds < 1:
        p.error("--cores must be >= 2 (one rank per core against one rank with them all), --rounds >= 1")
    return args


def compare(one: list[dict], many: list[dict]) -> dict:
    """1 x C ("threads") against C x 1 ("ranks") over the same rounds (runs listed by round in both)."""
    group = {"threads": summary(one), "ranks": summary(many)}
    for phase in PHASES:
        rounds = paired_ratios(one, many, phase)
        group[f"{phase}_ratio_rounds"] = rounds
        group[f"{phase}_ratio"] = statistics.median(rounds)
    group["same_greedy_tokens"] = all(
        r["output"]["greedy_tokens"] == one[0]["output"]["greedy_tokens"] for r in one + many)
    return group


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # a clear line before any heavy work
        export = open_export(args.export)
        STRATEGIES[STRATEGY].check(export.cfg, args.cores, args.prompt_len)
    except Exception as e:  # noqa: BLE001
        print(f"error: {e}", file=sys.stderr)
        return 2
    raw = Path(args.out).with_suffix("")
    raw.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, int], list[dict]] = {(a, p): [] for a in args.algos for p in (1, args.cores)}
    for rnd in range(args.rounds):
        print(f"[rank_compare] round {rnd + 1} of {args.rounds}", file=sys.stderr, flush=True)
        for algo in args.algos:
            for nranks in in_turn([1, args.cores], rnd):
                out = raw / f"{STRATEGY}_{algo}_np{nranks}_t{args.cores}_r{rnd}.json"
                runs[algo, nranks].append(run_bench(
                    args.mpi, nranks, args.cores, args.export, STRATEGY, algo, args.prompt_len,
                    args.gen_len, args.iters, args.warmup, out, args.timeout, tag="rank_compare"))
    groups = []
    for algo in args.algos:
        group = {"algo": algo, **compare(runs[algo, 1], runs[algo, args.cores])}
        groups.append(group)
        print(f"[rank_compare] {algo}: {args.cores} x 1 over 1 x {args.cores}: prefill "
              f"{group['prefill_ratio']:.1%}, decode {group['decode_ratio']:.1%}",
              file=sys.stderr, flush=True)
    write_json_atomic(args.out, {
        "schema_version": SCHEMA_VERSION, "strategy": STRATEGY, "cores": args.cores,
        "prompt_len": args.prompt_len, "gen_len": args.gen_len, "iters": args.iters,
        "warmup": args.warmup, "rounds": args.rounds, "groups": groups})
    return 0


if __name__ == "__main__":
    sys.exit(main())
