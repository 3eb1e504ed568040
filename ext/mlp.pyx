"""SwiGLU MLP, out = (silu(x w_gate^T) * (x w_up^T)) w_down_t, float32 or bf16 weights.

Few tokens (T <= SMALL_T: decode): the three products and SiLU * up in one OpenMP region of our
SIMD GEMV (ext/gemv.pxd), one thread wake-up per MLP. More tokens: the products go through
ext.linear (oneDNN's matmul, or BLAS's sgemm on our OpenMP threads); only SiLU * up is ours.
int8 weights (with float32 scales per output channel) always go through ext.linear: oneDNN's
int8 matmul, or blocks dequantized to float32 where oneDNN is absent.
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.stdint cimport int8_t, int32_t

from ext.gemv cimport (ROW_BLOCK, SMALL_T, gemv_rows, gemvt_rows, last_done, nchunks_of,
                       reduce_parts, set_flag, wait_flag)
from ext.qgemv cimport q8_quantize, q8_rows
from ext.simd cimport silu_mul_f32

from ext.linear import (ALL_DTYPES, BF16, INT8, ONEDNN_MIN_T, check_array, linear, linear_t,
                        scratch)

cnp.import_array()

cdef enum:
    # Elements per parallel chunk of the SiLU * up pass; smaller work runs on one thread.
    CHUNK = 4096


class MLPWorkspace:
    """Buffers for gate and up activations, (max_T, I_r) float32 each, allocated once and reused."""

    def __init__(self, int max_T, int I_r):
        if max_T < 1 or I_r < 1:
            raise ValueError(f"MLPWorkspace needs max_T >= 1 and I_r >= 1, got {max_T}, {I_r}")
        self.max_T = max_T
        self.I_r = I_r
        self.gate = np.empty((max_T, I_r), dtype=np.float32)  # (T, I_r), then silu(gate) * up
        self.up = np.empty((max_T, I_r), dtype=np.float32)    # (T, I_r)

    def reserve(self, int T):
        """Grow the buffers to hold T rows (a reallocation only when T > max_T)."""
        if T > self.max_T:
            self.__init__(T, self.I_r)


cdef void _silu_mul(float *g, const float *u, Py_ssize_t n_el, int n) noexcept nogil:
    """g = g / (1 + exp(-g)) * u, elementwise."""
    cdef Py_ssize_t c, i0
    cdef Py_ssize_t nchunks = (n_el + CHUNK - 1) // CHUNK
    if nchunks < 2:
        n = 1
    with nogil, parallel(num_threads=n):
        for c in prange(nchunks, schedule="static"):
            i0 = c * CHUNK
            silu_mul_f32(g + i0, u + i0, CHUNK if i0 + CHUNK <= n_el else n_el - i0)


def silu_mul(float[:, ::1] g, const float[:, ::1] u, int num_threads=1):
    """g = silu(g) * u in place; g, u (T, I)."""
    if (g.shape[0], g.shape[1]) != (u.shape[0], u.shape[1]):
        raise ValueError(f"silu_mul shapes differ: {(g.shape[0], g.shape[1])} vs {(u.shape[0], u.shape[1])}")
    if g.shape[0] * g.shape[1]:
        _silu_mul(&g[0, 0], &u[0, 0], g.shape[0] * g.shape[1], num_threads)


cdef void _mlp_small(const float *x, Py_ssize_t T, Py_ssize_t d, Py_ssize_t I, const void *wg,
                     const void *wu, const void *wd, float *gate, float *up, float *out,
                     float *parts, int bf, int down_rows, int n) noexcept nogil:
    """The MLP for T <= SMALL_T in one parallel region (one thread wake-up instead of four):
    gate, up = x @ wg.T, x @ wu.T; gate = silu(gate) * up; out = gate @ wd. gate, up (T, I);
    wd is down_proj transposed, (I, d), or with down_rows its rows, (d, I) (ext/decode.pyx's
    copies); parts: room for nchunks_of(I) * T * d floats."""
    cdef Py_ssize_t b, n0, n1, ch
    cdef Py_ssize_t nb = (I + ROW_BLOCK - 1) // ROW_BLOCK, nd = (d + ROW_BLOCK - 1) // ROW_BLOCK
    cdef Py_ssize_t nchunks = 0 if down_rows else nchunks_of(I)
    cdef int gate_up_done = 0, act_ready = 0, down_done = 0
    if nchunks == 1:
        parts = out
    with nogil, parallel(num_threads=n):
        for b in prange(2 * nb, schedule="static"):   # gate's row blocks, then up's
            n0 = (b % nb) * ROW_BLOCK
            n1 = n0 + ROW_BLOCK if n0 + ROW_BLOCK < I else I
            if b < nb:
                gemv_rows(x, <int>T, d, wg, d, n0, n1, gate, I, bf)
            else:
                gemv_rows(x, <int>T, d, wu, d, n0, n1, up, I, bf)
            if last_done(&gate_up_done, <int>(2 * nb)):
                silu_mul_f32(gate, up, T * I)   # T * I floats: microseconds
                set_flag(&act_ready)
        wait_flag(&act_ready)
        for b in prange(nd if down_rows else 0, schedule="static"):   # down's row blocks
            n0 = b * ROW_BLOCK
            n1 = n0 + ROW_BLOCK if n0 + ROW_BLOCK < d else d
            gemv_rows(gate, <int>T, I, wd, I, n0, n1, out, d, bf)
        for ch in prange(nchunks, schedule="static"):
            gemvt_rows(gate, <int>T, I, wd, d, I * ch // nchunks, I * (ch + 1) // nchunks,
                       parts + ch * T * d, bf)
            if nchunks > 1 and last_done(&down_done, <int>nchunks):
                reduce_parts(parts, nchunks, T * d, out)


cdef void _q8_mlp(const int8_t *xq, float sx, Py_ssize_t d, Py_ssize_t I, const int8_t *wg,
                  const float *sg, const int8_t *wu, const float *su, const int8_t *wd,
                  const float *sd, float *gate, float *up, int8_t *gq, float *out, int isa,
                  int n) noexcept nogil:
    """The int8 MLP for one token (xq, sx: rms(x) quantized), _mlp_small's one region: gate, up
    rows; silu(gate) * up quantized into gq by the thread that finishes last; then down's rows.
    wd is down_proj as rows, (d, I) (not the export's w_down_t): one sequential weight stream per
    thread (docs/design-notes.md#int8-gemv). n == 1: no region. The bits of ext.linear's
    per-product int8 path (the same quantization, exact int32 sums)."""
    cdef Py_ssize_t b, n0, n1
    cdef Py_ssize_t nb = (I + ROW_BLOCK - 1) // ROW_BLOCK, nd = (d + ROW_BLOCK - 1) // ROW_BLOCK
    cdef int gate_up_done = 0, act_ready = 0
    cdef float gs[1]   # the activation scale of silu(gate) * up, set before act_ready
    if n == 1:
        q8_rows(xq, sx, wg, d, 0, I, sg, gate, isa)
        q8_rows(xq, sx, wu, d, 0, I, su, up, isa)
        silu_mul_f32(gate, up, I)
        gs[0] = q8_quantize(gate, I, gq)
        q8_rows(gq, gs[0], wd, I, 0, d, sd, out, isa)
        return
    with nogil, parallel(num_threads=n):
        for b in prange(2 * nb, schedule="static"):   # gate's row blocks, then up's
            n0 = (b % nb) * ROW_BLOCK
            n1 = n0 + ROW_BLOCK if n0 + ROW_BLOCK < I else I
            if b < nb:
                q8_rows(xq, sx, wg, d, n0, n1, sg, gate, isa)
            else:
                q8_rows(xq, sx, wu, d, n0, n1, su, up, isa)
            if last_done(&gate_up_done, <int>(2 * nb)):
                silu_mul_f32(gate, up, I)
                gs[0] = q8_quantize(gate, I, gq)
                set_flag(&act_ready)
        wait_flag(&act_ready)
        for b in prange(nd, schedule="static"):
            n0 = b * ROW_BLOCK
            n1 = n0 + ROW_BLOCK if n0 + ROW_BLOCK < d else d
            q8_rows(gq, gs[0], wd, I, n0, n1, sd, out, isa)

def mlp(x, w_gate, w_up, w_down_t, out, ws, int num_threads=1, scales=None, down_rows=None):
    """out = (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down_t  (a rank's partial sum under TP).

    x, out (T, d) float32; w_gate, w_up, w_down_t (I_r, d), all float32, all bf16 bits (uint16,
    model_export.reader.BF16) or all int8 with scales = (s_gate (I_r,), s_up (I_r,), s_down (d,))
    float32; ws an MLPWorkspace with I_r columns (grown once if max_T < T); down_rows: the
    caller's copy of w_down_t.T (d, I_r), if it holds one (ext.linear.linear_t's rows).
    Few tokens (float32, bf16): our GEMV, one OpenMP region; else the products via ext.linear.
    """
    if x.ndim != 2 or w_gate.ndim != 2:
        raise ValueError(f"mlp: x and w_gate must be 2-D, got {x.shape}, {w_gate.shape}")
    T, d = x.shape
    I_r = w_gate.shape[0]
    check_array("mlp: x", x, (np.float32,), (T, d))
    for name, w in (("w_gate", w_gate), ("w_up", w_up), ("w_down_t", w_down_t)):
        check_array(f"mlp: {name}", w, (w_gate.dtype,) if w_gate.dtype in ALL_DTYPES
                    else ALL_DTYPES, (I_r, d))
    if (w_gate.dtype == INT8) != (scales is not None) or (scales is not None and len(scales) != 3):
        raise ValueError("mlp: int8 weights need scales = (s_gate, s_up, s_down), other dtypes none")
    sg, su, sd = (None, None, None) if scales is None else scales
    check_array("mlp: out", out, (np.float32,), (T, d))
    if ws.I_r != I_r:
        raise ValueError(f"MLPWorkspace is for I_r={ws.I_r}, weights have I_r={I_r}")
    if num_threads < 1:
        raise ValueError(f"mlp: num_threads must be >= 1, got {num_threads}")
    ws.reserve(T)
    gate = ws.gate[:T]   # (T, I_r)
    up = ws.up[:T]       # (T, I_r)
    if T > SMALL_T or d == 0 or T >= ONEDNN_MIN_T[w_gate.dtype] or w_gate.dtype == INT8:
        linear(x, w_gate, gate, num_threads, sg)
        linear(x, w_up, up, num_threads, su)
        silu_mul(gate, up, num_threads)
        linear_t(gate, w_down_t, out, num_threads, sd, down_rows)
        return
    if T == 0:
        return
    cdef float[::1] pv = scratch(nchunks_of(I_r) * T * d, "parts")
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef const void *wg = <const void *>cnp.PyArray_DATA(w_gate)
    cdef const void *wu = <const void *>cnp.PyArray_DATA(w_up)
    cdef const void *wd = <const void *>cnp.PyArray_DATA(w_down_t)
    cdef float *gp = <float *>cnp.PyArray_DATA(gate)
    cdef float *up_p = <float *>cnp.PyArray_DATA(up)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef Py_ssize_t Tc = T, dc = d, Ic = I_r
    cdef int bf = w_gate.dtype == BF16
    with nogil:
        _mlp_small(xp, Tc, dc, Ic, wg, wu, wd, gp, up_p, op, &pv[0], bf, 0, num_threads)
