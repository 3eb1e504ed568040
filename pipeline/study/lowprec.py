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

from collections.abc import Sequence

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


def teacher_forced_logits(engine, prompt_ids: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), V) logits of `engine` (a Qwen3Engine) fed `prompt_ids`, then tokens[:-1]:
    row i is what it predicts where the reference run predicted tokens[i]. Collective: every
    rank calls it alike."""
    engine.reset()
    out = np.zeros((len(tokens), engine.cfg.vocab_size), np.float32)  # (N, V)
    out[0] = engine.prefill(np.asarray(prompt_ids, np.int64))
    for i in range(1, len(tokens)):
        out[i] = engine.decode(int(tokens[i - 1]))
    return out
