"""Which products oneDNN's matmul takes (ext/dnnl.pyx), and whether on a packed copy of the weights.

ext.linear asks here before each product; what it does not hand over runs on our own kernels.
"""

from __future__ import annotations

import numpy as np

from ext import dnnl

F32, BF16, INT8 = np.dtype(np.float32), np.dtype(np.uint16), np.dtype(np.int8)

# The fewest tokens at which oneDNN's matmul does a dtype's products (when it loaded and offers
# more than its `ref` implementation): fewer run on our GEMV, which streams plain weights faster
# at 1-2 tokens and ties at 4; from 8 oneDNN is 1.1-2.2x (docs/design-notes.md#onednn). int8 at
# one token runs our int8 GEMV (ext/qgemv.h), so that int8 decode runs in one compiled call too and
# the per-op path has its bits (docs/design-notes.md#int8-gemv).
ONEDNN_MIN_T = {F32: 8, BF16: 8, INT8: 2}
# Weights oneDNN multiplies in its blocked layout: a reordered copy of each weight, made at its
# first product and kept (one per weight: every M and thread count here wants the same layout).
# int8: 2.2-2.9x at one token; bf16: the engine's prefill x0.88-0.90 of plain at 1 and 2 threads
# (docs/design-notes.md#bf16-packed); float32: 5-18% per product, not worth a copy. On AMX, see
# packs().
ONEDNN_PACKED = {F32: False, BF16: True, INT8: True}
_on_amx: dict = {}   # dtype -> whether oneDNN multiplies it on AMX here (asked once)


def packs(w_dtype, transposed: bool) -> bool:
    """Whether oneDNN multiplies these weights on its packed copy, or in place. Where it runs the
    dtype on AMX, weights stored as rows (N, K) stay in place: x0.70-0.84 of the packed copy's
    time for bf16 and x0.80-1.0 for int8 at 8-512 tokens, and x0.71-0.83 of the transposed
    (K, N) weights' packed copy, whose own plain form loses at 8 tokens (x1.2): those stay packed
    (docs/design-notes.md#amx-plain)."""
    dt = np.dtype(w_dtype)
    if not ONEDNN_PACKED[dt] or transposed:
        return ONEDNN_PACKED[dt]
    amx = _on_amx.get(dt)
    if amx is None:
        impl = dnnl.implementation(dt, ONEDNN_MIN_T[dt], 1024, 1024, False, 1, False)
        amx = _on_amx[dt] = impl is not None and "amx" in impl
    return not amx


def onednn(x: np.ndarray, w: np.ndarray, out: np.ndarray, num_threads: int, transposed: bool,
           scale: np.ndarray | None) -> bool:
    """out = x @ w.T (or x @ w_t) on oneDNN when the tables above say so and it can; True if it
    ran, False to leave the product to the caller's own kernels."""
    if x.shape[0] < ONEDNN_MIN_T[w.dtype] or not dnnl.available():
        return False
    try:
        dnnl.matmul(x, w, out, num_threads, transposed, scale, packs(w.dtype, transposed))
    except dnnl.Unsupported:   # `ref` only here (bf16 on an AVX2 CPU, say)
        return False
    return True
