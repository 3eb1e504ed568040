"""Qwen3 forward pass in plain NumPy: the oracle the parallel engine is checked against.

Written for clarity, not speed; float64 by default so that its own rounding is negligible next
to the float32 engine's. Follows Hugging Face's Qwen3ForCausalLM step by step:

    x = embed[ids]
    per layer:  h = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))   with q,k,v from rms(x)
                x = h + down(silu(gate(n)) * up(n))                                 with n = rms(h)
    logits = rms(x) @ lm_head.T

An int8 export is computed on its dequantized weights, q * scale (model_export.quant.dequantize,
in `dtype`) with float activations: the oracle of the int8 engine, which also quantizes its
activations per token, so the two differ by that rounding alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model_export.quant import dequantize
from model_export.reader import Export, LayerWeights, to_float


class KVCache:
    """Keys and values of every layer for positions 0 .. length-1 (post q/k-norm and RoPE)."""

    def __init__(self, num_layers: int, max_len: int, n_kv_heads: int, head_dim: int,
                 dtype: np.dtype) -> None:
        self.max_len = max_len
        self.length = 0
        shape = (max_len, n_kv_heads, head_dim)  # (S_max, Hkv, D)
        self.k = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.v = [np.zeros(shape, dtype) for _ in range(num_layers)]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape (T, D): angle pos * theta^(-2j/D), repeated for both halves (HF layout)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # (T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)  # (T, D)
    return np.cos(angles), np.sin(angles)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Half-rotation RoPE on x (T, heads, D): x*cos + rotate_half(x)*sin, rotate_half = [-x2, x1]."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_start: int) -> np.ndarray:
    """softmax(q k^T / sqrt(D) + causal mask) v with GQA.

    q (T, H, D) at absolute positions q_start.., k/v (S, Hkv, D) at positions 0..S-1.
    Query head h reads KV head h // (H / Hkv). Returns (T, H, D).
    """
    T, H, D = q.shape
    S, Hkv, _ = k.shape
    k = np.repeat(k, H // Hkv, axis=1)  # (S, H, D)
    v = np.repeat(v, H // Hkv, axis=1)  # (S, H, D)
    scores = np.einsum("thd,shd->hts", q, k) * D**-0.5  # (H, T, S); a Python float keeps q's dtype
    visible = np.arange(S)[None, :] <= (q_start + np.arange(T))[:, None]  # (T, S)
    scores = np.where(visible[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", probs, v)  # (T, H, D)


class ReferenceModel:
    """Qwen3 forward from an export (any stored dtype, bf16 included), in `dtype` (float64 or float32)."""

    def __init__(self, export: Export, dtype: type = np.float64) -> None:
        self.export = export
        self.cfg = export.cfg
        self.dtype = np.dtype(dtype)

    def new_cache(self, max_len: int) -> KVCache:
        c = self.cfg
        return KVCache(c.num_hidden_layers, max_len, c.num_key_value_heads, c.head_dim, self.dtype)

    def forward(self, ids: Sequence[int], cache: KVCache | None = None) -> np.ndarray:
        """Logits (T, V) for tokens `ids` at positions cache.length.. (0.. without a cache).

        With a cache, the new keys and values are appended to it and attention sees all of it.
        """
        ids = np.asarray(ids, dtype=np.int64)
        start = cache.length if cache is not None else 0
        if cache is not None and start + len(ids) > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions, need {start + len(ids)}")
        cos, sin = (self._cast(a) for a in rope_cos_sin(np.arange(start, start + len(ids)),
                                                       self.cfg.head_dim, self.cfg.rope_theta))
        x = self._cast(self.export.tensor("embed")[ids])  # (T, d)
        eps = self.cfg.rms_norm_eps
        for i in range(self.cfg.num_hidden_layers):
            w = self._dequantized(i, self.export.layer(i))
            x = x + self._attention(i, w, rms_norm(x, self._cast(w.attn_norm), eps), cos, sin, start, cache)
            x = x + self._mlp(w, rms_norm(x, self._cast(w.mlp_norm), eps))
        if cache is not None:
            cache.length = start + len(ids)
        x = rms_norm(x, self._cast(self.export.tensor("final_norm")), eps)
        return self._lm_head(x)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
        """Greedy decoding. Returns tokens (N,) and logits (N, V); tokens[i] = argmax(logits[i]).

        logits[0] is the last prompt position after the prefill, then one decode step per token.
        """
        cache = self.new_cache(len(prompt_ids) + max_new_tokens)
        logits = self.forward(prompt_ids, cache)[-1]
        tokens, all_logits = [], []
        for step in range(max_new_tokens):
            token = int(np.argmax(logits))
            tokens.append(token)
            all_logits.append(logits)
            if step + 1 < max_new_tokens:
                logits = self.forward([token], cache)[-1]
        return tokens, np.array(all_logits).reshape(max_new_tokens, self.cfg.vocab_size)

    def _attention(self, i: int, w: LayerWeights, x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                   start: int, cache: KVCache | None) -> np.ndarray:
        c, T = self.cfg, x.shape[0]
        q = (x @ self._cast(w.wq).T).reshape(T, c.num_attention_heads, c.head_dim)  # (T, H, D)
        k = (x @ self._cast(w.wk).T).reshape(T, c.num_key_value_heads, c.head_dim)  # (T, Hkv, D)
        v = (x @ self._cast(w.wv).T).reshape(T, c.num_key_value_heads, c.head_dim)  # (T, Hkv, D)
        # Qwen3: RMSNorm over head_dim, per head, before RoPE.
        q = apply_rope(rms_norm(q, self._cast(w.q_norm), c.rms_norm_eps), cos, sin)
        k = apply_rope(rms_norm(k, self._cast(w.k_norm), c.rms_norm_eps), cos, sin)
        if cache is not None:
            cache.k[i][start:start + T] = k
            cache.v[i][start:start + T] = v
            k, v = cache.k[i][:start + T], cache.v[i][:start + T]
        out = causal_attention(q, k, v, start)  # (T, H, D)
        return out.reshape(T, -1) @ self._cast(w.wo_t)  # wo_t is o_proj^T: (H*D, d)

    def _mlp(self, w: LayerWeights, x: np.ndarray) -> np.ndarray:
        gate = x @ self._cast(w.w_gate).T  # (T, I)
        up = x @ self._cast(w.w_up).T  # (T, I)
        return (silu(gate) * up) @ self._cast(w.w_down_t)  # w_down_t is down_proj^T: (I, d)

    def _lm_head(self, x: np.ndarray, rows: int = 16384) -> np.ndarray:
        """x (T, d) @ lm_head.T in blocks of vocabulary rows, so float64 never copies all of (V, d)."""
        head = self.export.lm_head()  # (V, d)
        scale = self.export.lm_head_scale()  # (V,) for an int8 lm_head, else None
        logits = np.empty((x.shape[0], head.shape[0]), self.dtype)  # (T, V)
        for r in range(0, head.shape[0], rows):
            block = head[r:r + rows]  # (rows, d); an int8 lm_head's scales run over its rows
            if scale is None:
                block = self._cast(block)
            else:
                block = dequantize(block, scale[r:r + rows], 0, self.dtype)
            logits[:, r:r + rows] = x @ block.T
        return logits

    def _dequantized(self, i: int, w: LayerWeights) -> LayerWeights:
        """Layer i's weights with every int8 matrix replaced by q * scale in self.dtype."""
        if w.wq_scale is None:
            return w
        fields = {}
        for name, a in vars(w).items():
            scale = getattr(w, name + "_scale", None)
            if scale is not None:  # the axis the export says the scales run along
                axis = self.export.scale_axis(f"layers.{i}.{name}")
                a = dequantize(a, scale, axis, self.dtype)
            fields[name] = None if name.endswith("_scale") else a
        return LayerWeights(**fields)

    def _cast(self, a: np.ndarray) -> np.ndarray:
        # Everything in one dtype: a mixed float32/float64 matmul is slower (docs/design-notes.md#one-dtype).
        # bf16 weights (uint16 bits) are widened exactly, so a bf16 export computes the same
        # numbers as a float32 export of the same checkpoint.
        return to_float(a, self.dtype)
