"""Sequence (context) parallelism.

The ranks of the sequence level own parts of the prompt's tokens and run every layer with the
weights of their heads: all of them in a one-level layout (the full, memory-mapped weights, one
page cache shared by all ranks), a head-wise block of them inside a two-level one
("sequence2.headwise2", whose `reduce` runs over `comms.tensor`). Prefill gathers every part's
K/V of its heads (Allgatherv, straight into position order) for causal attention. Under causal
attention a contiguous split leaves the last part most of the work, so the default `zigzag`
layout cuts the prompt into 2a chunks and gives part i chunks i and 2a-1-i (Megatron's
context-parallel load balance).

Decode keeps the KV cache sharded by sequence (new tokens go round-robin): each rank attends over
its own cache, giving a partial (o, m, l), and one Allgather of those statistics lets every rank
merge them exactly:  m = max_r m_r,  L = sum_r l_r e^(m_r - m),  o = sum_r o_r l_r e^(m_r - m) / L.
"""

from __future__ import annotations

import numpy as np

from ext.attention import merge
from pipeline.engine import partition
from pipeline.engine.strategies.base import Strategy

LAYOUTS = partition.SEQUENCE_LAYOUTS


class SequenceStrategy(Strategy):
    name = "sequence"

    def __init__(self, comms, cfg, attend_fn, max_seq: int, layout: str = "sequence",
                 sequence_layout: str = "zigzag") -> None:
        super().__init__(comms, cfg, attend_fn, max_seq, layout)
        partition.sequence_chunks(1, 1, 0, sequence_layout)  # reject an unknown layout now
        self.sequence_layout = sequence_layout
        self.sp = comms.sequence
        P, L = self.sp.size, len(self.layers)
        H, Hkv, D = len(self.shard.q_heads), len(self.shard.kv_heads), cfg.head_dim
        local_max = -(-max_seq // P) + 2
        # (S_r, Hkv_r, D) per layer: only this rank's share of the positions.
        self.k_cache = np.zeros((L, local_max, Hkv, D), np.float32)
        self.v_cache = np.zeros_like(self.k_cache)
        self.local_len = np.zeros(L, dtype=np.int64)
        # Prefill exchange: every part's K/V in position order, (T, Hkv_r, D).
        self.k_all = np.zeros((max_seq, Hkv, D), np.float32)
        self.v_all = np.zeros_like(self.k_all)
        # Decode merge: this rank's partial and everyone's, packed as [o (H*D) | m (H) | l (H)].
        self.part = np.zeros(H * D + 2 * H, np.float32)
        self.parts = np.zeros((P, H * D + 2 * H), np.float32)
        self.o_parts = np.zeros((P, 1, H, D), np.float32)  # (P, 1, H, D)
        self.m_parts = np.zeros((P, 1, H), np.float32)  # (P, 1, H)
        self.l_parts = np.zeros((P, 1, H), np.float32)  # (P, 1, H)
        self.plan: list[tuple[tuple[int, int], slice, np.ndarray, np.ndarray]] = []
        self.T = 0

    @property
    def positional_cache(self) -> bool:
        """One rank in the sequence level: it caches every position in order (round-robin over
        one) and its decode needs no merge. A DecodeStack's steps then leave local_len at the
        prefill's length, which only a prefill reads, after reset() has cleared it."""
        return self.sp.size == 1

    def _chunks(self, T: int) -> list[list[range]]:
        """Every part's prompt chunks, part by part."""
        return [partition.sequence_chunks(T, self.sp.size, i, self.sequence_layout)
                for i in range(self.sp.size)]

    def plan_prefill(self, T: int) -> np.ndarray:
        """Per chunk: its positions, its local rows, and the Allgatherv counts/displs (in floats)."""
        row = self.k_all.shape[1] * self.cfg.head_dim
        everyone = self._chunks(T)
        self.plan, first = [], 0
        for c, chunk in enumerate(everyone[self.sp.rank]):
            counts = np.array([len(ch[c]) * row for ch in everyone], np.int64)
            displs = np.array([ch[c].start * row for ch in everyone], np.int64)
            self.plan.append(((chunk.start, chunk.stop), slice(first, first + len(chunk)), counts, displs))
            first += len(chunk)
        self.T = T
        return np.concatenate([np.arange(ch.start, ch.stop) for ch in everyone[self.sp.rank]])

    def attend(self, layer, q, k, v, out, pos, prefill) -> None:
        local = layer - self.layers.start
        if prefill:
            self._attend_prefill(local, q, k, v, out)
        else:
            self._attend_decode(local, q, k, v, out, pos)

    def _attend_prefill(self, layer, q, k, v, out) -> None:
        if self.local_len[layer]:
            raise RuntimeError("sequence strategy: prefill must start from an empty cache")
        T_r = k.shape[0]
        for _, rows, counts, displs in self.plan:  # each part's chunk c lands at its positions
            self.sp.allgatherv(k[rows], self.k_all[: self.T], counts, displs)
            self.sp.allgatherv(v[rows], self.v_all[: self.T], counts, displs)
        self.k_cache[layer, :T_r] = k
        self.v_cache[layer, :T_r] = v
        self.local_len[layer] = T_r
        for (a, b), rows, _, _ in self.plan:
            if b > a:  # causality: keys after position b-1 are never visible to this chunk
                self.attend_fn(q[rows], self.k_all[:b], self.v_all[:b], out[rows], a, 0)

    def _attend_decode(self, layer, q, k, v, out, pos) -> None:
        H, D = q.shape[1], q.shape[2]
        n = self.local_len[layer]
        if pos % self.sp.size == self.sp.rank:  # round-robin keeps the shards balanced
            self.k_cache[layer, n] = k[0]
            self.v_cache[layer, n] = v[0]
            n += 1
            self.local_len[layer] = n
        o = self.part[: H * D].reshape(1, H, D)
        m = self.part[H * D: H * D + H].reshape(1, H)
        l = self.part[H * D + H:].reshape(1, H)
        # Every cached key precedes the query, so q_start=pos, k_start=0 masks nothing.
        self.attend_fn(q, self.k_cache[layer, :n], self.v_cache[layer, :n], o, pos, 0, m, l)
        if self.sp.size == 1:
            out[...] = o
            return
        self.sp.allgather(self.part, self.parts)
        P = self.sp.size
        self.o_parts.reshape(P, -1)[...] = self.parts[:, : H * D]
        self.m_parts.reshape(P, -1)[...] = self.parts[:, H * D: H * D + H]
        self.l_parts.reshape(P, -1)[...] = self.parts[:, H * D + H:]
        merge(self.o_parts, self.m_parts, self.l_parts, out)

    def last_token_owner(self, T: int) -> int:
        for i, chunks in enumerate(self._chunks(T)):
            if any(len(ch) and ch.stop == T for ch in chunks):
                return partition.rank_of(self.layout, self.comm.size, {"sequence": i})
        raise AssertionError("no rank holds the last position")

    def reset(self) -> None:
        self.local_len[:] = 0
