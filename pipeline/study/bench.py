"""Benchmark one cell: strategy x attention algorithm x ranks x prompt length.

    mpiexec -n P python -m mpi4py -m pipeline bench --export DIR --parallel-strategy headwise \
        --attention-algo online_softmax --prompt-len 128 --gen-len 32 --iters 3 --warmup 1 --out F.json

prefill: one forward of prompt_len tokens into an empty cache; decode: gen_len greedy steps after
it. A barrier starts each timed region; each time is the slowest rank's. Warm-up is excluded.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

from model_export.atomic import write_json_atomic
from model_export.reader import Export, open_export
from pipeline.engine.comm import Comm
from pipeline.engine.launch import threads_per_rank, validated
from pipeline.engine.machine import machine_facts
from pipeline.engine.model import Qwen3Engine, check_job
from pipeline.engine.prompts import random_prompt
from pipeline.engine.strategies import ALGORITHMS, STRATEGIES
from pipeline.engine.strategies.sequence import LAYOUTS
from pipeline.engine.threads import set_threads
from pipeline.study.roofline import measure_ceilings, roofline_fractions

SCHEMA_VERSION = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="export directory (python -m pipeline export)")
    p.add_argument("--parallel-strategy", required=True, help=f"one of {sorted(STRATEGIES)}")
    p.add_argument("--attention-algo", required=True, help=f"one of {list(ALGORITHMS)}")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sequence-layout", default="zigzag", choices=LAYOUTS,
                   help="token split of the sequence strategy: zigzag balances causal attention")
    p.add_argument("--threads", type=int, default=None,
                   help="cores for the whole job; each rank gets max(1, threads // P) (default: all)")
    p.add_argument("--block", type=int, default=64, help="online-softmax KV block size")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt token ids")
    p.add_argument("--out", required=True, help="result JSON (written atomically by rank 0)")
    args = p.parse_args(argv)
    for name in ("prompt_len", "gen_len", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def timed_run(engine: Qwen3Engine, comm: Comm, prompt: np.ndarray, gen_len: int) -> dict:
    """One prefill + gen_len decode steps; this rank's seconds and comm books for each phase."""
    engine.reset()
    comm.barrier()
    comm.reset_counters()
    t0 = MPI.Wtime()
    logits = engine.prefill(prompt)
    prefill_s = MPI.Wtime() - t0
    prefill_comm = (comm.seconds, comm.bytes_sent)
    tokens = [int(np.argmax(logits))]
    prefill_digest = digest(logits)
    comm.barrier()
    comm.reset_counters()
    steps = np.zeros(gen_len)
    for i in range(gen_len):
        t = MPI.Wtime()
        logits = engine.decode(tokens[-1])
        tokens.append(int(np.argmax(logits)))
        steps[i] = MPI.Wtime() - t
    return dict(prefill_s=prefill_s, steps=steps, tokens=tokens, prefill_digest=prefill_digest,
                final_digest=digest(logits), prefill_comm=prefill_comm,
                decode_comm=(comm.seconds, comm.bytes_sent))


def digest(logits: np.ndarray) -> dict:
    return {"first8": [float(x) for x in logits[:8]], "l2": float(np.linalg.norm(logits.astype(np.float64))),
            "argmax": int(np.argmax(logits))}


def phase_stats(seconds: list[float], tokens: int, comm_s: list[float], bytes_sent: int) -> dict:
    med = statistics.median(seconds)
    comm_med = statistics.median(comm_s)
    return {"seconds": seconds, "median_s": med, "min_s": min(seconds), "max_s": max(seconds),
            "std_s": statistics.pstdev(seconds), "tokens": tokens,
            "tokens_per_s": tokens / med, "tokens_per_s_min": tokens / max(seconds),
            "tokens_per_s_max": tokens / min(seconds), "ms_per_token": 1e3 * med / tokens,
            "comm_s": comm_med, "compute_s": max(0.0, med - comm_med),
            "bytes_sent_per_token": bytes_sent / tokens}


def environment(comm: Comm, threads: int) -> dict:
    return machine_facts(comm.size, threads)


def memory_mb(attention_scratch_bytes: int = 0) -> dict:
    """Peak resident set (VmHWM), private anonymous memory now (RssAnon) and the attention
    kernels' largest working memory (from the engine), in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon = 0.0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"peak_rss_mb": peak, "anon_mb": anon, "attention_scratch_mb": attention_scratch_bytes / 1e6}


def run(args: argparse.Namespace) -> dict | None:
    comm = Comm()
    threads = threads_per_rank(args.threads, comm.size)
    set_threads(threads)

    def setup() -> Export:
        export = open_export(args.export)
        check_job(export, args.parallel_strategy, args.attention_algo, comm.size, args.prompt_len,
                  args.gen_len)
        return export

    export = validated(comm, setup)
    cfg = export.cfg
    prompt = random_prompt(args.seed, cfg.vocab_size, args.prompt_len)
    engine = Qwen3Engine(export, args.parallel_strategy, args.attention_algo, comm, threads,
                         max_seq=args.prompt_len + args.gen_len + 1, block=args.block,
                         sequence_layout=args.sequence_layout)
    runs = []
    for it in range(args.warmup + args.iters):
        r = timed_run(engine, comm, prompt, args.gen_len)
        if comm.rank == 0:
            kind = "warm-up" if it < args.warmup else "iter"
            print(f"[bench] {kind} {it + 1}/{args.warmup + args.iters}: prefill {r['prefill_s']:.3f} s, "
                  f"decode {r['steps'].sum():.3f} s", file=sys.stderr, flush=True)
        if it >= args.warmup:
            runs.append(r)
    result = summarise(args, comm, export, threads, prompt, runs, engine.attention_scratch_bytes)
    ceilings = ceilings_on_rank0(comm, export.cfg, args.prompt_len, threads)
    if result is not None:
        result["roofline"] = roofline(export, args, result, ceilings)
    return result


def ceilings_on_rank0(comm: Comm, cfg, prompt_len: int, threads: int) -> dict | None:
    """The machine's GEMM and streaming-GEMV ceilings, measured in this run with the job's cores.

    Rank 0 measures; the others wait on a polled Ibarrier that sleeps, because MPICH's blocking
    barrier busy-polls and would take a core from the measurement.
    """
    ceilings = None
    if comm.rank == 0:
        cores = min(os.cpu_count() or 1, comm.size * threads)
        set_threads(cores)
        ceilings = measure_ceilings(cfg, prompt_len, cores)
        set_threads(threads)
    if comm.size > 1:
        req = comm.comm.Ibarrier()
        while not req.Test():
            time.sleep(0.01)
    return ceilings


def roofline(export, args, result: dict, ceilings: dict) -> dict:
    """Prefill FLOP/s over the GEMM ceiling, decode bytes/s over the streaming bandwidth."""
    dtype_bytes = 2 if export.dtype_name == "bfloat16" else 4
    fractions = roofline_fractions(export.cfg, ceilings, prompt_len=args.prompt_len, gen_len=args.gen_len,
                                   prefill_s=result["prefill"]["median_s"],
                                   decode_s=result["decode"]["median_s"], dtype_bytes=dtype_bytes)
    result["prefill"]["roofline_fraction"] = fractions["prefill_fraction"]
    result["decode"]["roofline_fraction"] = fractions["decode_fraction"]
    return {**fractions, "ceilings": ceilings}


def summarise(args, comm: Comm, export, threads: int, prompt: np.ndarray, runs: list[dict],
              attention_scratch_bytes: int = 0) -> dict | None:
    """Slowest rank per timed region, then statistics over iterations (on rank 0)."""
    local = np.array([[r["prefill_s"], r["steps"].sum(), r["prefill_comm"][0], r["decode_comm"][0]]
                      for r in runs])
    steps = np.array([r["steps"] for r in runs])  # (iters, gen_len)
    if comm.size > 1:
        comm.comm.Allreduce(MPI.IN_PLACE, local, op=MPI.MAX)
        comm.comm.Allreduce(MPI.IN_PLACE, steps, op=MPI.MAX)
    bytes_sent = comm.comm.allreduce(runs[-1]["prefill_comm"][1], op=MPI.MAX), \
        comm.comm.allreduce(runs[-1]["decode_comm"][1], op=MPI.MAX)
    mem = comm.comm.gather(memory_mb(attention_scratch_bytes), root=0)
    if comm.rank:
        return None
    prefill = phase_stats(list(local[:, 0]), args.prompt_len, list(local[:, 2]), bytes_sent[0])
    decode = phase_stats(list(local[:, 1]), args.gen_len, list(local[:, 3]), bytes_sent[1])
    step_ms = 1e3 * steps.reshape(-1)
    decode["step_ms"] = {"p50": float(np.percentile(step_ms, 50)), "p90": float(np.percentile(step_ms, 90)),
                         "max": float(step_ms.max())}
    total_ms = 1e3 * float(local[:, 0].sum())
    seed_tokens = args.prompt_len * args.iters
    last = runs[-1]
    cfg = export.cfg
    return {
        "schema_version": SCHEMA_VERSION,
        "cell": {"parallel_strategy": args.parallel_strategy, "attention_algo": args.attention_algo,
                 "nranks": comm.size, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
                 "iters": args.iters, "warmup": args.warmup, "threads_per_rank": threads,
                 "block": args.block, "seed": args.seed, "sequence_layout": args.sequence_layout},
        "environment": environment(comm, threads),
        "model": {"export": os.path.abspath(args.export), "config": cfg.to_dict(),
                  "num_parameters": num_parameters(export.manifest),
                  "dtype": export.manifest.get("dtype", "float32"),
                  "synthetic": bool(export.manifest["source"].get("synthetic")),
                  "checkpoint_digest": export.manifest["source"].get("digest", "")},
        "prefill": prefill,
        "decode": decode,
        "ttft_ms": 1e3 * prefill["median_s"],
        "seed_metric": {"tokens": seed_tokens, "total_ms": total_ms, "ms_per_token": total_ms / seed_tokens,
                        "tokens_per_s": seed_tokens / (total_ms / 1e3)},
        "memory": {"peak_rss_mb": [m["peak_rss_mb"] for m in mem],
                   "anon_mb": [m["anon_mb"] for m in mem],
                   "attention_scratch_mb": [m["attention_scratch_mb"] for m in mem]},
        "output": {"prompt_ids": [int(t) for t in prompt], "greedy_tokens": last["tokens"],
                   "prefill_logits": last["prefill_digest"], "final_logits": last["final_digest"]},
    }


def num_parameters(manifest: dict) -> int:
    return int(sum(np.prod(t["shape"]) for t in manifest["tensors"].values()))


def print_summary(result: dict) -> None:
    c, p, d = result["cell"], result["prefill"], result["decode"]
    print(f"{c['parallel_strategy']}/{c['attention_algo']} P={c['nranks']} "
          f"x {c['threads_per_rank']} threads, "
          f"prompt {c['prompt_len']}, gen {c['gen_len']}: "
          f"prefill {p['tokens_per_s']:.1f} tok/s ({1e3 * p['median_s']:.1f} ms), "
          f"decode {d['tokens_per_s']:.2f} tok/s ({d['ms_per_token']:.1f} ms/token), "
          f"peak RSS/rank {max(result['memory']['peak_rss_mb']):.0f} MB")
    if "roofline" in result:
        r = result["roofline"]
        print(f"roofline: prefill {r['prefill_gflops']:.0f} GFLOP/s = {100 * r['prefill_fraction']:.0f}% "
              f"of GEMM {r['gemm_gflops']:.0f}; decode {r['decode_gb_s']:.1f} GB/s = "
              f"{100 * r['decode_fraction']:.0f}% of streaming {r['gemv_gb_s']:.1f} GB/s")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    if result is not None:
        write_json_atomic(args.out, result)
        print_summary(result)


if __name__ == "__main__":
    main()
