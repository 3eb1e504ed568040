"""Head-wise tensor parallelism (Megatron style).

Rank r of P owns KV groups [r Hkv/P, (r+1) Hkv/P) with their query heads and a block of the MLP's
intermediate features: q/k/v and gate/up are column-sharded, o_proj and down_proj row-sharded,
so one Allreduce after each of the two row-sharded matmuls completes a layer.
"""

from __future__ import annotations

import numpy as np

from model_export.reader import Export, LayerWeights
from pipeline.engine.strategies.base import Strategy


class HeadwiseStrategy(Strategy):
    name = "headwise"

    def __init__(self, comm, cfg, attend_fn, max_seq: int) -> None:
        super().__init__(comm, cfg, attend_fn, max_seq)
        hkv = cfg.num_key_value_heads // comm.size
        # (S, Hkv_r, D) per layer: this rank's heads only.
        self.k_cache = np.zeros((cfg.num_hidden_layers, max_seq, hkv, cfg.head_dim), np.float32)
        self.v_cache = np.zeros_like(self.k_cache)

    @classmethod
    def check(cls, cfg, nranks: int, prompt_len: int) -> None:
        if cfg.num_key_value_heads % nranks or cfg.intermediate_size % nranks:
            works = [p for p in cfg.valid_rank_counts() if cfg.intermediate_size % p == 0]
            raise ValueError(
                f"headwise: {nranks} ranks do not divide num_key_value_heads={cfg.num_key_value_heads}"
                f" (and intermediate_size={cfg.intermediate_size}); use P in {works}")

    def layer_weights(self, export: Export, i: int) -> LayerWeights:
        return export.layer(i, self.comm.rank, self.comm.size)

    def plan_prefill(self, T: int) -> np.ndarray:
        return np.arange(T)

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
