"""The benchmark prompt: seeded random token ids, one definition for pipeline.study.bench and the
Hugging Face baseline (pipeline.study.baseline), whose rows the report compares token for token."""

from __future__ import annotations

import numpy as np


def random_prompt(seed: int, vocab_size: int, length: int) -> np.ndarray:
    """`length` token ids drawn uniformly from [0, vocab_size) by numpy's default generator."""
    if length < 1 or vocab_size < 1:
        raise ValueError(f"a prompt needs length >= 1 and vocab_size >= 1 (got {length}, {vocab_size})")
    return np.random.default_rng(seed).integers(0, vocab_size, length)
