"""What a bench or baseline JSON says of its timings and of the logits it computed, defined once.

Both records carry the same four timing entries (`timings`): "prefill" and "decode" (median, min
and max over the timed iterations, tokens/s, ms/token), "ttft_ms" and the seed's table metric
"seed_metric" (total ms of the prefills, tokens = prompt_len x iters); and the same digest of a
logits vector (`logits_digest`), which verify holds against the reference's.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np


def phase_stats(seconds: Sequence[float], tokens: int) -> dict:
    """Statistics of one phase over the timed iterations: `seconds` per iteration, `tokens` each."""
    med = statistics.median(seconds)
    return {"seconds": [float(s) for s in seconds], "median_s": med, "min_s": min(seconds),
            "max_s": max(seconds), "std_s": statistics.pstdev(seconds), "tokens": tokens,
            "tokens_per_s": tokens / med, "tokens_per_s_min": tokens / max(seconds),
            "tokens_per_s_max": tokens / min(seconds), "ms_per_token": 1e3 * med / tokens}


def step_ms(step_seconds: Sequence[float] | np.ndarray) -> dict:
    """Median, 90th percentile and maximum of the single decode steps, in ms."""
    ms = 1e3 * np.asarray(step_seconds, dtype=np.float64).reshape(-1)
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)), "max": float(ms.max())}


def seed_metric(prefill_seconds: Sequence[float], prompt_len: int) -> dict:
    """The seed's table: total ms of the timed prefills, tokens = prompt_len x iterations."""
    total_ms = 1e3 * float(sum(prefill_seconds))
    tokens = prompt_len * len(prefill_seconds)
    return {"tokens": tokens, "total_ms": total_ms, "ms_per_token": total_ms / tokens,
            "tokens_per_s": tokens / (total_ms / 1e3)}


def timings(prefill_seconds: Sequence[float], decode_seconds: Sequence[float],
            step_seconds: Sequence[float] | np.ndarray, prompt_len: int, gen_len: int, *,
            prefill_extra: dict | None = None, decode_extra: dict | None = None) -> dict:
    """The "prefill", "decode", "ttft_ms" and "seed_metric" entries of a bench or baseline JSON.

    `*_extra`: further entries of a phase (the bench's communication books), after the statistics.
    """
    prefill = {**phase_stats(prefill_seconds, prompt_len), **(prefill_extra or {})}
    decode = {**phase_stats(decode_seconds, gen_len), **(decode_extra or {}),
              "step_ms": step_ms(step_seconds)}
    return {"prefill": prefill, "decode": decode, "ttft_ms": 1e3 * prefill["median_s"],
            "seed_metric": seed_metric(prefill_seconds, prompt_len)}


def logits_digest(logits: np.ndarray) -> dict:
    """What verify compares of a logits vector: its first 8 values, its L2 norm (in float64), its arg-max."""
    return {"first8": [float(x) for x in logits[:8]], "l2": float(np.linalg.norm(logits.astype(np.float64))),
            "argmax": int(np.argmax(logits))}


def top1_margin(logits: np.ndarray) -> float:
    """Largest logit minus the second largest: how far a greedy choice is from flipping. verify
    holds int8 cells' tokens to their reference only while the reference's margin exceeds what a
    layout's activation rounding moves a logit (pipeline/report/verify.py)."""
    top2 = np.partition(np.asarray(logits, np.float64), -2)[-2:]
    return float(top2[1] - top2[0])


def add_run_args(p, threads_help: str) -> None:
    """The run arguments every baseline runner takes, as the bench names them."""
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids (the bench's)")


def check_run_args(p, args) -> None:
    """One argparse error line for a run argument out of range."""
    for name in ("prompt_len", "gen_len", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error("--warmup must be >= 0 and --threads >= 1")
