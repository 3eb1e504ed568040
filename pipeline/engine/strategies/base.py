"""The interface every parallel strategy implements; the model calls nothing else.

A strategy decides three things: which weights a rank holds, which tokens a rank computes,
and how attention and the row-sharded matmuls are completed across ranks (its collectives).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from model_export.config import Qwen3Config
from model_export.reader import Export, LayerWeights
from pipeline.engine import partition
from pipeline.engine.comm import Comm


class Strategy(ABC):
    name: str = ""

    def __init__(self, comm: Comm, cfg: Qwen3Config, attend_fn, max_seq: int) -> None:
        self.comm, self.cfg, self.max_seq = comm, cfg, max_seq
        self.attend_fn = attend_fn  # attention kernel with the algorithm already chosen
        self.shard = partition.shard(cfg, self.name, comm.size, comm.rank)  # what this rank holds
        self.vocab_rows = slice(self.shard.vocab.start, self.shard.vocab.stop)  # its lm_head rows
        vocab = [partition.shard(cfg, self.name, comm.size, r).vocab for r in range(comm.size)]
        self.vocab_counts = np.array([len(b) for b in vocab], dtype=np.int64)
        self.vocab_displs = np.array([b.start for b in vocab], dtype=np.int64)

    @classmethod
    def check(cls, cfg: Qwen3Config, nranks: int, prompt_len: int) -> None:
        """Raise ValueError when this strategy cannot run the job; called before any heavy work."""
        partition.check(cfg, cls.name, nranks, prompt_len)

    def layer_weights(self, export: Export, i: int) -> LayerWeights:
        """The weights of layer i this rank multiplies with (zero-copy views of the export)."""
        s = self.shard
        return export.layer(i, q_heads=s.q_heads, kv_heads=s.kv_heads, features=s.features)

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
