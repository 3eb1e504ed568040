"""How far a low-precision run's logits are from the float32 run of the same prompt.

Both runs are (N, V) logits of N steps, step i fed the same tokens (the float32 run's greedy
tokens: teacher forcing, so that after a first disagreement the two still see the same context):

    nmse  = sum (a - b)^2 / sum b^2            a low precision, b float32; llama.cpp's
                                               test-llama-archs fails a model above 1e-4
    kl    = mean_i sum_v p_iv (log p_iv - log q_iv),  p = softmax(b_i), q = softmax(a_i)
    top1  = mean_i [argmax a_i == argmax b_i]

computed in float64 whatever the inputs' dtype. The issue asks for >= 32 decode steps
(MIN_STEPS): fewer steps say little about agreement that is meant to be near 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

MIN_STEPS = 32


def _pair(low: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(low, np.float64), np.asarray(ref, np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"need two (steps, vocab) logits of one shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("logits are not all finite")
    return a, b


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)  # so exp never overflows
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nmse(low: np.ndarray, ref: np.ndarray) -> float:
    """sum (low - ref)^2 / sum ref^2 over every step and token."""
    a, b = _pair(low, ref)
    return float(np.sum((a - b) ** 2) / np.sum(b * b))


def kl_per_step(low: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(N,) KL(softmax(ref_i) || softmax(low_i)) in nats: ref's distribution is P."""
    a, b = _pair(low, ref)
    log_p, log_q = _log_softmax(b), _log_softmax(a)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=1)


def top1_agreement(low: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of steps whose argmax token is the same."""
    a, b = _pair(low, ref)
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def measures(low: np.ndarray, ref: np.ndarray, min_steps: int = MIN_STEPS) -> dict:
    """The record a bench JSON holds: nmse, kl mean / max, top-1 agreement and the step count."""
    if np.asarray(low).shape[0] < min_steps:
        raise ValueError(f"low-precision measures need >= {min_steps} steps, got {np.asarray(low).shape[0]}")
    kl = kl_per_step(low, ref)
    return {"steps": int(kl.shape[0]), "nmse": nmse(low, ref), "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()), "top1_agreement": top1_agreement(low, ref)}


def teacher_forced(prefill: Callable[[np.ndarray], np.ndarray], decode: Callable[[int], np.ndarray],
                   prompt_ids: np.ndarray, tokens: Sequence[int], vocab: int) -> np.ndarray:
    """(len(tokens), vocab) logits of a model that `prefill`s the prompt into an empty cache, then
    `decode`s tokens[:-1] one at a time: row i is what it predicts where the reference run predicted
    tokens[i]. Our engine, llama.cpp and the tests feed any model through this one loop."""
    out = np.zeros((len(tokens), vocab), np.float32)  # (N, V)
    out[0] = prefill(np.asarray(prompt_ids, np.int64))
    for i in range(1, len(tokens)):
        out[i] = decode(int(tokens[i - 1]))
    return out


def teacher_forced_logits(engine, prompt_ids: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """teacher_forced on `engine` (a Qwen3Engine). Collective: every rank calls it alike."""
    engine.reset()
    return teacher_forced(engine.prefill, engine.decode, prompt_ids, tokens, engine.cfg.vocab_size)


def load_reference(path: str | Path, prompt_ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """(greedy tokens, (N, V) float32 logits) of a float32 reference run that pipeline.study.refcache
    stored, for a program outside the engine (the llama.cpp and torch baselines) to be measured
    against; ValueError when it is not such a run of `prompt_ids` or has fewer than MIN_STEPS steps."""
    try:
        with np.load(path) as z:
            tokens, logits = [int(t) for t in z["tokens"]], np.asarray(z["logits"], np.float32)
            ran_on = z["prompt_ids"].tolist() if "prompt_ids" in z else None
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a reference run of pipeline.study.refcache ({e})") from None
    if ran_on is None or ran_on != [int(t) for t in prompt_ids]:
        raise ValueError(f"{path}: a reference run of another prompt (or of none it records)")
    if logits.ndim != 2 or logits.shape[0] != len(tokens) or len(tokens) < MIN_STEPS:
        raise ValueError(f"{path}: need >= {MIN_STEPS} steps of logits, one per token; got {logits.shape}")
    return tokens, logits


def describe(m: dict) -> str:
    """One line of a measures record, as the programs print it."""
    return (f"against float32: NMSE {m['nmse']:.2e}, KL {m['kl_mean']:.2e}, "
            f"top-1 {m['top1_agreement']:.3f} over {m['steps']} steps")
