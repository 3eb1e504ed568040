"""Qwen3 forward (prefill and KV-cache decode), SPMD: every rank runs this same code.

Sharding and communication come from a Strategy object; the block itself is the math:
    h  = x + o_proj(attn(rope(q_norm(q)), rope(k_norm(k)), v))      # attn input rms(x)
    x' = h + down(silu(gate(n)) * up(n)),  n = rms(h)
All buffers are allocated once here; decode steps only take views of them.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ext import attention as attention_kernels
from ext import decode as decode_kernels
from ext import mlp as mlp_kernels
from ext import ops
from ext.hugepages import copies as huge_copies
from ext.linear import linear, linear_many, linear_t
from model_export.dtypes import BF16
from model_export.reader import Export, take_rows
from pipeline.engine import partition
from pipeline.engine.comm import Comm
from pipeline.engine.strategies import ALGORITHMS, Comms, make_strategy
from pipeline.engine.strategies.base import Strategy

# bf16: the bf16 units (or widened to float32); int8: per-token int8 activations on VNNI
# (dequantized where oneDNN or VNNI is absent); ext.linear.implementation names what ran
SUPPORTED_DTYPES = ("float32", "bfloat16", "int8")


def check_job(export: Export, layout: str, algo: str, nranks: int, prompt_len: int,
              gen_len: int) -> None:
    """Every reason the job cannot run, raised as ValueError before any heavy work."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown attention algorithm {algo!r}; choose from {list(ALGORITHMS)}")
    cfg = export.cfg
    if prompt_len < 1:
        raise ValueError("the prompt is empty")
    if prompt_len + gen_len > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({prompt_len}) + generation ({gen_len}) tokens exceed "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    if export.dtype_name not in SUPPORTED_DTYPES:
        raise ValueError(f"{export.path}: the engine computes with {list(SUPPORTED_DTYPES)} weights, "
                         f"this export holds {export.dtype_name}; re-export with --dtype int8, bf16 "
                         "or float32")
    partition.check(cfg, layout, nranks, prompt_len)


# where the weights a rank multiplies with live: views of the export's memory map (no copy), or
# private copies in one anonymous 2 MiB-page mapping (Qwen3Engine._copy_weights)
WEIGHTS = ("map", "copy")


class Qwen3Engine:
    def __init__(self, export: Export, layout: str, algo: str, comm: Comm, threads: int,
                 max_seq: int, block: int = 64, sequence_layout: str = "zigzag",
                 micro_batch: int | None = None, weights: str = "map") -> None:
        if weights not in WEIGHTS:
            raise ValueError(f"weights {weights!r}: choose from {list(WEIGHTS)}")
        cfg = self.cfg = export.cfg
        self.comm, self.threads, self.max_seq = comm, threads, max_seq
        attend = functools.partial(self._attend, algo=algo, block=block,
                                   scale=float(cfg.head_dim) ** -0.5)
        self.strategy = make_strategy(layout, Comms.of_layout(comm, layout), cfg, attend, max_seq,
                                      sequence_layout=sequence_layout, micro_batch=micro_batch)
        # only the layers this rank runs (a pipeline stage holds 1/P of them)
        self.layers = {i: self.strategy.layer_weights(export, i) for i in self.strategy.layers}
        self.embed = export.tensor("embed")
        self.final_norm = export.tensor("final_norm")
        self.lm_head = export.lm_head()[self.strategy.vocab_rows]  # (V_r, d) rows of this rank
        scale = export.lm_head_scale()  # (V,) in an int8 export, sliced with the rows; else None
        self.lm_head_scale = None if scale is None else scale[self.strategy.vocab_rows]
        if weights == "copy":
            self._copy_weights()
        # the weights this rank multiplies with: its layers and lm_head rows (the embedding is a
        # memory-mapped table of which each step reads one row); a decode step reads each once
        self.layer_arrays = [a for w in self.layers.values() for a in vars(w).values()
                             if isinstance(a, np.ndarray)]
        self.head_arrays = [a for a in (self.lm_head, self.lm_head_scale) if a is not None]
        self.weight_arrays = self.head_arrays + self.layer_arrays
        self.weight_bytes = sum(a.nbytes for a in self.weight_arrays)
        # read_weights' sets, built once: a read then costs one OpenMP region, not one per array
        self.weight_reads = {part: ops.StreamSet(arrays) for part, arrays in (
            ("all", self.weight_arrays), ("layers", self.layer_arrays), ("head", self.head_arrays))}
        self.cos, self.sin = ops.rope_table(max_seq, cfg.head_dim, cfg.rope_theta)
        self._allocate(max_seq)
        self.algo, self.block = algo, block
        self.decode_stack = self._decode_stack()  # None: decode runs layer by layer, op by op
        # its private copies of o_proj and down_proj as rows (int8, bf16), which prefill's
        # products take where oneDNN multiplies rows faster (ext.linear.linear_t's rows)
        rows = [] if self.decode_stack is None else self.decode_stack.row_copies
        self.row_copies = dict(zip(self.strategy.layers, rows, strict=True)) if rows else {}
        self.pos = 0  # tokens in the cache

    def _copy_weights(self) -> None:
        """This rank's layer weights and lm_head rows (not the embedding, of which a step reads one
        row) as private copies in one anonymous 2 MiB-page mapping instead of views of the export's
        map: their resident memory doubles while the page cache holds the files too, and in a slow
        hour of these VMs the page cache read ~30% slower (docs/design-notes.md#weight-copies)."""
        fields = {i: [k for k, a in vars(w).items() if isinstance(a, np.ndarray)]
                  for i, w in self.layers.items()}
        got = iter(huge_copies([getattr(self.layers[i], k) for i, ks in fields.items() for k in ks]
                               + [self.lm_head]))
        for i, ks in fields.items():  # in the order they were packed
            self.layers[i] = dataclasses.replace(self.layers[i], **{k: next(got) for k in ks})
        self.lm_head = next(got)

    def _decode_stack(self) -> decode_kernels.DecodeStack | None:
        """This rank's layers as one compiled call per decode step, where the strategy does
        nothing between the kernels but the tensor-parallel reduce: attention on the rank's own
        positional cache (headwise, layer stages, sequence on one rank; not a sequence level of
        several), float32, bf16 or int8 weights. It saves the kernels' Python wrappers
        (docs/design-notes.md#fixed-cost)."""
        s, w = self.strategy, next(iter(self.layers.values()))
        # the reduce between a layer's halves: none with one rank per tensor group
        self.stack_reduce = s.reduce if s.comms.tensor.size > 1 else None
        if (not s.positional_cache or type(s).reduce is not Strategy.reduce
                or w.wq.dtype not in (np.float32, BF16, np.int8)):
            return None
        layers = [tuple(getattr(self.layers[i], f) for f in decode_kernels.FIELDS) for i in s.layers]
        scales = None if w.wq_scale is None else [
            tuple(getattr(self.layers[i], f) for f in decode_kernels.SCALE_FIELDS) for i in s.layers]
        return decode_kernels.DecodeStack(layers, s.k_cache, s.v_cache, self.cos, self.sin,
                                          self.cfg.rms_norm_eps, float(self.cfg.head_dim) ** -0.5,
                                          self.algo, self.threads, scales)

    def read_weights(self, part: str = "all") -> int:
        """Read every byte of this rank's weights once with its threads, nothing but loads (the
        streaming ceiling of a decode step, which reads each once); returns their checksum.
        `part`: "all", "layers" (its decoder layers') or "head" (its lm_head rows)."""
        if part not in self.weight_reads:
            raise ValueError(f"unknown part {part!r} of the weights; choose from {list(self.weight_reads)}")
        return self.weight_reads[part].read(self.threads)

    def _allocate(self, T: int) -> None:
        cfg, w = self.cfg, next(iter(self.layers.values()))
        d, D = cfg.hidden_size, cfg.head_dim
        H_r, Hkv_r, I_r = w.wq.shape[0] // D, w.wk.shape[0] // D, w.w_gate.shape[0]
        self.x = np.zeros((T, d), np.float32)  # (T, d) residual stream
        self.n = np.zeros((T, d), np.float32)  # (T, d) normed input of a sub-block
        self.o = np.zeros((T, d), np.float32)  # (T, d) sub-block output (partial under TP)
        self.q = np.zeros((T, H_r, D), np.float32)  # (T, H_r, D)
        self.k = np.zeros((T, Hkv_r, D), np.float32)  # (T, Hkv_r, D)
        self.v = np.zeros((T, Hkv_r, D), np.float32)  # (T, Hkv_r, D)
        self.att = np.zeros((T, H_r, D), np.float32)  # (T, H_r, D) attention output
        self.mlp_ws = mlp_kernels.MLPWorkspace(T, I_r)
        self.token = np.zeros(1, np.int64)  # (1,) the decode step's input token
        self.h_last = np.zeros((1, d), np.float32)  # (1, d) final-normed last position
        self.logits_r = np.zeros(self.lm_head.shape[0], np.float32)  # (V_r,)
        self.logits = np.zeros(cfg.vocab_size, np.float32)  # (V,) on every rank
        self.scores = np.zeros(0, np.float32)  # standard attention's score tensor, grown on demand
        self.attention_scratch_bytes = 0  # the most working memory one attention call held

    def _note_scratch(self, T: int, H: int, Hkv: int, S: int) -> None:
        floats = attention_kernels.scratch_floats(self.algo, T, H, Hkv, self.cfg.head_dim, S,
                                                  self.block, self.threads)
        self.attention_scratch_bytes = max(self.attention_scratch_bytes, 4 * floats)

    def _attend(self, q, k, v, out, q_start, k_start, m=None, l=None, *, algo, block, scale):
        (T, H, _), (S, Hkv) = q.shape, k.shape[:2]
        self._note_scratch(T, H, Hkv, S)
        scores = None
        if algo == "standard":  # the whole (heads x queries x keys) score tensor, kept for reuse
            need = attention_kernels.standard_scores_size(T, H, Hkv, S)
            if self.scores.shape[0] < need:
                self.scores = np.empty(need, np.float32)
            scores = self.scores
        attention_kernels.attention(q, k, v, out, q_start, k_start, scale, algo, block, m, l,
                                    self.threads, scores)

    def reset(self) -> None:
        self.pos = 0
        self.strategy.reset()

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """Run the prompt into an empty cache; returns the last position's logits (V,)."""
        if self.pos:
            raise RuntimeError("prefill needs an empty cache: call reset() first")
        T = len(ids)
        positions = self.strategy.plan_prefill(T)  # the prompt positions this rank computes
        x = self.x[: len(positions)]
        if self.strategy.first_stage:  # later pipeline stages receive their input
            take_rows(self.embed, ids[positions], x)
        # RoPE tables gathered at this rank's positions (not always one contiguous run).
        rope = (self.cos[positions], self.sin[positions], 0)
        self._forward(x, int(positions[0]), rope, prefill=True)
        self.pos = T
        owner = self.strategy.last_token_owner(T)  # the last position is its last local row
        mine = owner is None or owner == self.comm.rank
        return self._logits(x[-1:] if mine else None, owner)

    def decode(self, token: int) -> np.ndarray:
        """Append one token at position self.pos; returns its logits (V,)."""
        if self.pos >= self.max_seq:
            raise RuntimeError(f"KV cache full ({self.max_seq} positions)")
        x = self.x[:1]
        self.token[0] = token
        if self.strategy.first_stage:
            take_rows(self.embed, self.token, x)
        self._forward(x, self.pos, (self.cos, self.sin, self.pos), prefill=False)
        self.pos += 1
        owner = self.strategy.decode_owner()
        return self._logits(x if owner is None or owner == self.comm.rank else None, owner)

    def _forward(self, x: np.ndarray, pos: int, rope: tuple, prefill: bool) -> None:
        """Run x through this rank's layers, block of rows by block (a pipeline's micro-batches)."""
        s, (cos, sin, _) = self.strategy, rope
        for rows in s.batches(x.shape[0], prefill):
            xb = x[rows.start:rows.stop]
            s.receive(xb)  # from the previous stage (no-op on the first)
            # prefill's RoPE tables hold one row per local row; decode indexes the full ones by pos
            rope_b = (cos[rows.start:rows.stop], sin[rows.start:rows.stop], 0) if prefill else rope
            if not prefill and self.decode_stack is not None:  # every layer in one call
                self._note_scratch(1, self.q.shape[1], self.k.shape[1], pos + 1)
                self.decode_stack.step(xb, pos, self.stack_reduce)
            else:
                for i in s.layers:
                    self._block(i, xb, pos + rows.start, rope_b, prefill)
            s.send(xb)  # to the next stage (no-op on the last)

    def _block(self, i: int, x: np.ndarray, pos: int, rope: tuple, prefill: bool) -> None:
        w, T, eps, nt = self.layers[i], x.shape[0], self.cfg.rms_norm_eps, self.threads
        n, o, q, k, v, att = (b[:T] for b in (self.n, self.o, self.q, self.k, self.v, self.att))
        cos, sin, pos0 = rope  # row t of q/k rotates by the angles of row pos0 + t
        ops.rmsnorm(x, w.attn_norm, eps, n, nt)
        int8 = w.wq_scale is not None  # int8 export: each product takes its per-channel scales
        linear_many(n, (w.wq, w.wk, w.wv), (q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)), nt,
                    scales=(w.wq_scale, w.wk_scale, w.wv_scale) if int8 else None)
        ops.qk_norm_rope(q, w.q_norm, eps, cos, sin, pos0, nt)
        ops.qk_norm_rope(k, w.k_norm, eps, cos, sin, pos0, nt)
        self.strategy.attend(i, q, k, v, att, pos, prefill)
        wo_rows, down_rows = self.row_copies.get(i, (None, None))
        linear_t(att.reshape(T, -1), w.wo_t, o, nt, scale=w.wo_t_scale, rows=wo_rows)
        self.strategy.reduce(o)  # o_proj is row-sharded under headwise
        ops.add_rmsnorm(x, o, w.mlp_norm, eps, n, nt)  # x = h; n = rms(h)
        mlp_kernels.mlp(n, w.w_gate, w.w_up, w.w_down_t, o, self.mlp_ws, nt,
                        scales=(w.w_gate_scale, w.w_up_scale, w.w_down_t_scale) if int8 else None,
                        down_rows=down_rows)
        self.strategy.reduce(o)  # down_proj is row-sharded under headwise
        np.add(x, o, out=x)

    def _logits(self, x_last: np.ndarray | None, owner: int | None) -> np.ndarray:
        """Vocabulary-parallel lm_head on the final-normed last position; full logits on every rank.

        `owner` is the rank holding the last position, or None when every rank holds it.
        """
        if x_last is not None:
            ops.rmsnorm(x_last, self.final_norm, self.cfg.rms_norm_eps, self.h_last, self.threads)
        if owner is not None:
            self.comm.bcast(self.h_last, owner)
        linear(self.h_last, self.lm_head, self.logits_r.reshape(1, -1), self.threads,
               scale=self.lm_head_scale)
        s = self.strategy
        self.comm.allgatherv(self.logits_r, self.logits, s.vocab_counts, s.vocab_displs)
        return self.logits

    def generate(self, prompt_ids: np.ndarray, max_new_tokens: int,
                 keep_logits: bool = False) -> tuple[list[int], np.ndarray | None]:
        """Greedy generation: tokens[i] = argmax(logits[i]); logits[0] comes from the prefill."""
        self.reset()
        all_logits = np.zeros((max_new_tokens, self.cfg.vocab_size), np.float32) if keep_logits else None
        tokens: list[int] = []
        logits = self.prefill(prompt_ids)
        for step in range(max_new_tokens):
            if step:
                logits = self.decode(tokens[-1])
            if keep_logits:
                all_logits[step] = logits
            tokens.append(int(np.argmax(logits)))
        return tokens, all_logits
