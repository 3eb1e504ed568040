"""The interface every parallel strategy implements; the model calls nothing else.

A strategy decides three things: which weights a rank holds, which tokens a rank computes,
and how attention and the row-sharded matmuls are completed across ranks (its collectives).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from model_export.config import Qwen3Config
from model_export.reader import Export, LayerWeights
from pipeline.engine.comm import Comm, split_range


class Strategy(ABC):
    name: str = ""

    def __init__(self, comm: Comm, cfg: Qwen3Config, attend_fn, max_seq: int) -> None:
        self.comm, self.cfg, self.max_seq = comm, cfg, max_seq
        self.attend_fn = attend_fn  # attention kernel with the algorithm already chosen
        v0, v1 = split_range(cfg.vocab_size, comm.size, comm.rank)
        self.vocab_rows = slice(v0, v1)  # this rank's block of the vocabulary-parallel lm_head
        bounds = [split_range(cfg.vocab_size, comm.size, r) for r in range(comm.size)]
        self.vocab_counts = np.array([b - a for a, b in bounds], dtype=np.int64)
        self.vocab_displs = np.array([a for a, _ in bounds], dtype=np.int64)

    @classmethod
    def check(cls, cfg: Qwen3Config, nranks: int, prompt_len: int) -> None:
        """Raise ValueError when this strategy cannot run the job; called before any heavy work."""
        return None

    @abstractmethod
    def layer_weights(self, export: Export, i: int) -> LayerWeights:
        """The weights of layer i this rank multiplies with (zero-copy views of the export)."""

    @abstractmethod
    def plan_prefill(self, T: int) -> np.ndarray:
        """Prepare a prefill of T prompt tokens; returns the positions this rank computes (int64)."""

    @abstractmethod
    def attend(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray,
               pos: int, prefill: bool) -> None:
        """Store this rank's new k/v (T, Hkv_r, D) in its cache and write attention of q into out.

        q (T, H_r, D) holds this rank's queries after RoPE: in prefill, those of the positions
        plan_prefill returned (pos is the first); in decode, the one token at position pos.
        """

    @abstractmethod
    def reduce(self, partial: np.ndarray) -> None:
        """Complete the output of a row-sharded matmul (o_proj, down_proj) in place."""

    @abstractmethod
    def last_token_owner(self, T: int) -> int | None:
        """Rank whose prefill tokens include the last prompt position; None when all ranks do."""

    @abstractmethod
    def reset(self) -> None:
        """Empty the KV cache."""
