"""Sequence (context) parallelism.

Rank r owns a contiguous block of the prompt's tokens and runs every head with the full,
memory-mapped weights (one page cache shared by all ranks). Prefill gathers every rank's K/V
(Allgatherv) for causal attention. Decode keeps the KV cache sharded by sequence: each rank
attends over its own cache, giving a partial (o, m, l), and one Allgather of those statistics
lets every rank merge them exactly:
    m = max_r m_r,  L = sum_r l_r e^(m_r - m),  o = sum_r o_r l_r e^(m_r - m) / L.
"""

from __future__ import annotations

import numpy as np

from ext.attention import merge
from pipeline.comm import split_range
from pipeline.strategies.base import Strategy
from pipeline.weights import Export, LayerWeights


class SequenceStrategy(Strategy):
    name = "sequence"

    def __init__(self, comm, cfg, attend_fn, max_seq: int) -> None:
        super().__init__(comm, cfg, attend_fn, max_seq)
        P, L = comm.size, cfg.num_hidden_layers
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        local_max = -(-max_seq // P) + 1
        # (S_r, Hkv, D) per layer: only this rank's share of the positions.
        self.k_cache = np.zeros((L, local_max, Hkv, D), np.float32)
        self.v_cache = np.zeros_like(self.k_cache)
        self.local_len = np.zeros(L, dtype=np.int64)
        # Prefill exchange: every rank's K/V, (T, Hkv, D).
        self.k_all = np.zeros((max_seq, Hkv, D), np.float32)
        self.v_all = np.zeros_like(self.k_all)
        # Decode merge: this rank's partial and everyone's, packed as [o (H*D) | m (H) | l (H)].
        self.part = np.zeros(H * D + 2 * H, np.float32)
        self.parts = np.zeros((P, H * D + 2 * H), np.float32)
        self.o_parts = np.zeros((P, 1, H, D), np.float32)
        self.m_parts = np.zeros((P, 1, H), np.float32)
        self.l_parts = np.zeros((P, 1, H), np.float32)
        self.counts = np.zeros(P, np.int64)
        self.displs = np.zeros(P, np.int64)
        self.prompt_len = 0

    @classmethod
    def check(cls, cfg, nranks: int, prompt_len: int) -> None:
        if prompt_len < nranks:
            raise ValueError(
                f"sequence: the prompt has {prompt_len} tokens, fewer than the {nranks} ranks; "
                f"every rank needs at least one token (use P <= {prompt_len})")

    def layer_weights(self, export: Export, i: int) -> LayerWeights:
        return export.layer(i, 0, 1)

    def plan_prefill(self, T: int) -> tuple[int, int]:
        row = self.cfg.num_key_value_heads * self.cfg.head_dim
        for r in range(self.comm.size):  # Allgatherv layout of K/V, in floats
            a, b = split_range(T, self.comm.size, r)
            self.counts[r], self.displs[r] = (b - a) * row, a * row
        self.prompt_len = T
        return split_range(T, self.comm.size, self.comm.rank)

    def attend(self, layer, q, k, v, out, pos, prefill) -> None:
        if prefill:
            self._attend_prefill(layer, q, k, v, out, pos)
        else:
            self._attend_decode(layer, q, k, v, out, pos)

    def _attend_prefill(self, layer, q, k, v, out, pos) -> None:
        if self.local_len[layer]:
            raise RuntimeError("sequence strategy: prefill must start from an empty cache")
        T_r, T = k.shape[0], self.prompt_len
        self.comm.allgatherv(k, self.k_all[:T], self.counts, self.displs)
        self.comm.allgatherv(v, self.v_all[:T], self.counts, self.displs)
        self.k_cache[layer, :T_r] = k
        self.v_cache[layer, :T_r] = v
        self.local_len[layer] = T_r
        start, stop = split_range(T, self.comm.size, self.comm.rank)
        # Causality: keys after this rank's last token are never visible, so pass only [0, stop).
        self.attend_fn(q, self.k_all[:stop], self.v_all[:stop], out, start, 0)

    def _attend_decode(self, layer, q, k, v, out, pos) -> None:
        H, D = q.shape[1], q.shape[2]
        n = self.local_len[layer]
        if pos % self.comm.size == self.comm.rank:  # round-robin keeps the shards balanced
            self.k_cache[layer, n] = k[0]
            self.v_cache[layer, n] = v[0]
            n += 1
            self.local_len[layer] = n
        o = self.part[: H * D].reshape(1, H, D)
        m = self.part[H * D: H * D + H].reshape(1, H)
        l = self.part[H * D + H:].reshape(1, H)
        # Every cached key precedes the query, so q_start=pos, k_start=0 masks nothing.
        self.attend_fn(q, self.k_cache[layer, :n], self.v_cache[layer, :n], o, pos, 0, m, l)
        if self.comm.size == 1:
            out[...] = o
            return
        self.comm.allgather(self.part, self.parts)
        self.o_parts.reshape(self.comm.size, -1)[...] = self.parts[:, : H * D]
        self.m_parts.reshape(self.comm.size, -1)[...] = self.parts[:, H * D: H * D + H]
        self.l_parts.reshape(self.comm.size, -1)[...] = self.parts[:, H * D + H:]
        merge(self.o_parts, self.m_parts, self.l_parts, out)

    def reduce(self, partial: np.ndarray) -> None:
        pass  # every rank holds full weights: nothing to complete

    def last_token_owner(self, T: int) -> int:
        return self.comm.size - 1

    def reset(self) -> None:
        self.local_len[:] = 0
