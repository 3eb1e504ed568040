"""Head-wise tensor parallelism (Megatron style).

Rank r of P owns a block of KV groups with their query heads and a block of the MLP's
intermediate features (pipeline.engine.partition decides which): q/k/v and gate/up are
column-sharded, o_proj and down_proj row-sharded, so one Allreduce after each of the two
row-sharded matmuls completes a layer.
"""

from __future__ import annotations

import numpy as np

from pipeline.engine import partition
from pipeline.engine.strategies.base import Strategy


class HeadwiseStrategy(Strategy):
    name = "headwise"

    def __init__(self, comm, cfg, attend_fn, max_seq: int) -> None:
        super().__init__(comm, cfg, attend_fn, max_seq)
        hkv = len(self.shard.kv_heads)
        # (S, Hkv_r, D) per layer: this rank's heads only.
        self.k_cache = np.zeros((cfg.num_hidden_layers, max_seq, hkv, cfg.head_dim), np.float32)
        self.v_cache = np.zeros_like(self.k_cache)

    def plan_prefill(self, T: int) -> np.ndarray:
        (everything,) = partition.prompt_chunks(self.name, T, self.comm.size, self.comm.rank)
        return np.arange(everything.start, everything.stop)  # every rank computes every token

    def attend(self, layer, q, k, v, out, pos, prefill) -> None:
        T = q.shape[0]
        kc, vc = self.k_cache[layer], self.v_cache[layer]
        kc[pos:pos + T] = k
        vc[pos:pos + T] = v
        self.attend_fn(q, kc[:pos + T], vc[:pos + T], out, pos, 0)

    def reduce(self, partial: np.ndarray) -> None:
        self.comm.allreduce_sum(partial)

    def last_token_owner(self, T: int) -> int | None:
        return None  # every rank holds every token

    def reset(self) -> None:
        pass  # positions are overwritten; the model tracks the length
