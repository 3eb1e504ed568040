"""The engine against this machine's ceilings, measured back to back: 1 rank, in one process.

    python -m pipeline.study.roofline_compare --export EXPORT --threads 2 --algos standard online_softmax \
        --prompt-len 128 --gen-len 32 --rounds 3 --out results/roofline_compare.json

A bench cell measures its ceilings once, after its timed runs. On a shared VM whose streaming
rate moves by 20% within minutes (dtype_compare saw float32 decode at 17.6 and at 22.3 GB/s), a
fraction whose numerator and denominator were taken a minute apart moves with it. Here each round
measures the ceilings (pipeline.study.roofline) and one prefill + decode (pipeline.study.bench.timed_run)
adjacent in time, the order reversed every other round, and takes that round's fractions; the
figure is the median over the rounds. One warm-up run per algorithm first (not counted).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from model_export.atomic import write_json_atomic
from model_export.reader import open_export
from pipeline.engine.comm import Comm
from pipeline.engine.model import Qwen3Engine, check_job
from pipeline.engine.prompts import random_prompt
from pipeline.engine.strategies import ALGORITHMS
from pipeline.engine.threads import set_threads
from pipeline.study.alternate import in_turn
from pipeline.study.bench import timed_run
from pipeline.study.roofline import measure_ceilings, roofline_fractions

SCHEMA_VERSION = 1
STRATEGY = "headwise"  # on one rank every strategy runs the same computation
CEILING_REPEATS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="export directory (model_export.reader)")
    p.add_argument("--threads", type=int, required=True, help="the rank's threads (and the ceilings')")
    p.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="the random prompt's seed (as pipeline.study.bench)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.gen_len < 1:
        p.error("--threads, --rounds and --gen-len must be >= 1")
    return args


def fractions_of(cfg, ceilings: dict, run: dict, args: argparse.Namespace, dtype_bytes: int) -> dict:
    """One round's achieved rates and their fractions of the ceilings measured beside them."""
    f = roofline_fractions(cfg, ceilings, prompt_len=args.prompt_len, gen_len=args.gen_len,
                           prefill_s=run["prefill_s"], decode_s=float(run["steps"].sum()),
                           dtype_bytes=dtype_bytes)
    keys = ("gemm_gflops", "gemv_gb_s", "prefill_gflops", "decode_gb_s")
    return {k: f[k] for k in (*keys, "prefill_fraction", "decode_fraction")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    comm = Comm()
    try:  # a clear line before any heavy work
        if comm.size != 1:
            raise ValueError(f"runs as one rank, in one process (started with {comm.size})")
        export = open_export(args.export)
        for algo in args.algos:
            check_job(export, STRATEGY, algo, 1, args.prompt_len, args.gen_len)
    except Exception as e:  # noqa: BLE001
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg, dtype_bytes = export.cfg, 2 if export.dtype_name == "bfloat16" else 4
    set_threads(args.threads)
    prompt = random_prompt(args.seed, cfg.vocab_size, args.prompt_len)
    engines = {algo: Qwen3Engine(export, STRATEGY, algo, comm, args.threads,
                                 max_seq=args.prompt_len + args.gen_len + 1) for algo in args.algos}
    for engine in engines.values():
        timed_run(engine, comm, prompt, args.gen_len)  # warm-up: pages in the weights
    rounds: dict[str, list[dict]] = {algo: [] for algo in args.algos}
    for rnd in range(args.rounds):
        for algo, engine in engines.items():
            got = {}
            for step in in_turn(["ceilings", "engine"], rnd):
                if step == "ceilings":
                    got[step] = measure_ceilings(cfg, args.prompt_len, args.threads, repeats=CEILING_REPEATS)
                else:
                    got[step] = timed_run(engine, comm, prompt, args.gen_len)
            r = fractions_of(cfg, got["ceilings"], got["engine"], args, dtype_bytes)
            rounds[algo].append(r)
            print(f"[roofline_compare] round {rnd + 1}/{args.rounds}, {algo}: prefill "
                  f"{r['prefill_fraction']:.1%} of {r['gemm_gflops']:.1f} GFLOP/s, decode "
                  f"{r['decode_fraction']:.1%} of {r['gemv_gb_s']:.1f} GB/s", file=sys.stderr, flush=True)
    groups = [{"algo": algo,
               "prefill_fraction": statistics.median(r["prefill_fraction"] for r in rs),
               "decode_fraction": statistics.median(r["decode_fraction"] for r in rs),
               "rounds": rs} for algo, rs in rounds.items()]
    write_json_atomic(args.out, {
        "schema_version": SCHEMA_VERSION, "export": args.export, "dtype": export.dtype_name,
        "threads": args.threads, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
        "rounds": args.rounds, "groups": groups})
    return 0


if __name__ == "__main__":
    sys.exit(main())
