"""Benchmarks run back to back: one pipeline.study.bench job per call, and the medians over rounds.

On a shared machine two things compared minutes apart differ by the load in between; runs that
alternate (ABAB...) see the same load, so their ratio holds. pipeline.study.dtype_compare (float32 vs
bf16) and pipeline.study.rank_compare (ranks vs threads) are built on these functions: each round runs
every variant once, in an order reversed every other round (ABBA...), so that a steady drift in
the machine's speed favours no variant, and a ratio is taken within each round, between runs
adjacent in time, then the median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of every back-to-back comparison: what each bench runs, how often, where to."""
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mpi", default="mpiexec", help="MPI launcher command (before -n P)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per bench run (0: none)")
    p.add_argument("--out", required=True)


def run_bench(mpi: str, nranks: int, threads: int, export: str, strategy: str, algo: str,
              prompt_len: int, gen_len: int, iters: int, warmup: int, out: Path,
              timeout: float, tag: str) -> dict:
    """One `mpiexec -n nranks pipeline.study.bench` job on `threads` cores in all; its JSON result."""
    cmd = [*shlex.split(mpi), "-n", str(nranks), sys.executable, "-m", "mpi4py", "-m", "pipeline", "bench",
           "--export", export, "--parallel-strategy", strategy, "--attention-algo", algo,
           "--prompt-len", str(prompt_len), "--gen-len", str(gen_len), "--iters", str(iters),
           "--warmup", str(warmup), "--threads", str(threads), "--out", str(out)]
    print(f"[{tag}] " + shlex.join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or None)
    if proc.returncode:
        raise RuntimeError(f"bench failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def summary(runs: list[dict]) -> dict:
    """One configuration over its rounds: the median of the bench medians, and each round's."""
    first = runs[0]
    return {"dtype": first["model"]["dtype"], "export": first["model"]["export"],
            "nranks": first["cell"]["nranks"], "threads_per_rank": first["cell"]["threads_per_rank"],
            "decode_tokens_per_s": statistics.median(r["decode"]["tokens_per_s"] for r in runs),
            "prefill_tokens_per_s": statistics.median(r["prefill"]["tokens_per_s"] for r in runs),
            "decode_rounds": [r["decode"]["tokens_per_s"] for r in runs],
            "prefill_rounds": [r["prefill"]["tokens_per_s"] for r in runs],
            "decode_gb_s": statistics.median(r["roofline"]["decode_gb_s"] for r in runs),
            "peak_rss_mb": max(max(r["memory"]["peak_rss_mb"]) for r in runs),
            "greedy_tokens": first["output"]["greedy_tokens"]}


def in_turn(items: list, rnd: int) -> list:
    """The order of round `rnd`: as given on even rounds, reversed on odd ones."""
    return list(items) if rnd % 2 == 0 else list(items)[::-1]


def paired_ratios(base: list[dict], other: list[dict], phase: str) -> list[float]:
    """`other` over `base` in tokens/s of `phase`, round by round (both lists in round order)."""
    return [o[phase]["tokens_per_s"] / b[phase]["tokens_per_s"] for b, o in zip(base, other, strict=True)]
