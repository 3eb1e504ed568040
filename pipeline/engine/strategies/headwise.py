"""Head-wise tensor parallelism (Megatron style).

Rank r of P owns a block of KV groups with their query heads (or, past one rank per KV head, part
of one KV head's queries with that head replicated) and a block of the MLP's intermediate
features; pipeline.engine.partition decides which. q/k/v and gate/up are column-sharded, o_proj and
down_proj row-sharded, so one Allreduce after each of the two row-sharded matmuls completes a layer.
Attention is local: each rank caches and attends over its own heads only.
"""

from __future__ import annotations

import numpy as np

from pipeline.engine.strategies.base import Strategy


class HeadwiseStrategy(Strategy):
    name = "headwise"

    def __init__(self, comms, cfg, attend_fn, max_seq: int, layout: str = "headwise") -> None:
        super().__init__(comms, cfg, attend_fn, max_seq, layout)
        hkv = len(self.shard.kv_heads)
        # (S, Hkv_r, D) per layer this rank runs: its heads only.
        self.k_cache = np.zeros((len(self.layers), max_seq, hkv, cfg.head_dim), np.float32)
        self.v_cache = np.zeros_like(self.k_cache)

    @property
    def positional_cache(self) -> bool:
        return True  # its own heads, every position

    def plan_prefill(self, T: int) -> np.ndarray:
        return np.arange(T)  # every rank computes every token

    def attend(self, layer, q, k, v, out, pos, prefill) -> None:
        T = q.shape[0]
        kc, vc = self.k_cache[layer - self.layers.start], self.v_cache[layer - self.layers.start]
        kc[pos:pos + T] = k
        vc[pos:pos + T] = v
        self.attend_fn(q, kc[:pos + T], vc[:pos + T], out, pos, 0)

    def last_token_owner(self, T: int) -> int | None:
        return None  # every rank holds every token

    def reset(self) -> None:
        pass  # positions are overwritten; the model tracks the length
