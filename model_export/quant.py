"""int8 weight quantization: symmetric, one float32 scale per output channel.

    scale[n] = max_k |w[n, k]| / 127          (float32; 1 for a channel that is all zeros)
    q[n, k]  = clip(round(w[n, k] / scale[n]), -127, 127)   round half to even, in float64
    w[n, k] ~= q[n, k] * scale[n]

n runs over the output channels (the rows of a Hugging Face weight (N, K)). A matrix stored
transposed (o_proj, down_proj: (K, N)) keeps the same scales, so they run along its columns:
`axis` is the axis of the stored int8 array that the scales run along (0 row-major, 1 transposed).
Per output channel is what an int8 GEMM can apply after its integer accumulation (oneDNN's
per-N weight scales); the measurement against per-block-of-32 scales is in
docs/design-notes.md#int8-export. -128 is never used, so q and -q are both representable.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

QMAX = 127
GRANULARITY = "per_output_channel"
RULE = ("symmetric: scale[n] = max_k |w[n,k]| / 127 as float32 (1 for an all-zero channel); "
        "q = clip(round_half_even(w / scale[n]), -127, 127) computed in float64; w ~= q * scale[n]; "
        "n = output channel (rows of wq/wk/wv/w_gate/w_up/lm_head, columns of wo_t/w_down_t)")


def channel_scales(rows: Iterable[np.ndarray]) -> np.ndarray:
    """float32 (N,): the scales of a matrix given as blocks of its output-channel rows (N_b, K)."""
    amax = np.concatenate([np.max(np.abs(b), axis=1) for b in rows]).astype(np.float64)
    if not np.isfinite(amax).all():
        raise ValueError("weights are not all finite; int8 scales are undefined")
    scale = (amax / QMAX).astype(np.float32)
    scale[scale == 0] = 1.0  # all zeros (or underflow): any scale reconstructs them; 1 divides safely
    return scale


def quantize(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 q of float weights `w`, with `scale` broadcast against w (shape (R, 1) or (1, C))."""
    q = np.rint(np.asarray(w, np.float64) / scale.astype(np.float64))
    return np.clip(q, -QMAX, QMAX).astype(np.int8)


def dequantize(q: np.ndarray, scale: np.ndarray, axis: int,
               dtype: np.dtype | type = np.float32) -> np.ndarray:
    """q * scale as `dtype`, `scale` running along `axis` of the 2-D q (0: rows, 1: columns)."""
    if q.ndim != 2 or axis not in (0, 1) or scale.shape != (q.shape[axis],):
        raise ValueError(f"scale {scale.shape} does not run along axis {axis} of q {q.shape}")
    s = scale.astype(dtype)
    return q.astype(dtype) * (s[:, None] if axis == 0 else s[None, :])
