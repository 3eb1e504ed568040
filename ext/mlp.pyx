"""SwiGLU MLP, out = (silu(x w_gate^T) * (x w_up^T)) w_down_t, with the GEMMs in BLAS.

The three GEMMs go through numpy.matmul with out= buffers: numpy's OpenBLAS, the one BLAS of the
process, whose threads pipeline.threads.set_threads controls. Transposed weights are passed as
views, so BLAS reads the memmapped weights in place (no copy). Only SiLU * up is ours.
"""

import numpy as np

from cython.parallel cimport parallel, prange

from ext.simd cimport silu_mul_f32

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


def _check(name, a, shape):
    if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != shape:
        raise ValueError(f"mlp: {name} must be C-contiguous float32 of shape {shape}, "
                         f"got {a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' (not contiguous)'}")


def mlp(x, w_gate, w_up, w_down_t, out, ws, int num_threads=1):
    """out = (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down_t  (a rank's partial sum under TP).

    x, out (T, d); w_gate, w_up, w_down_t (I_r, d); ws an MLPWorkspace with max_T >= T (grown once
    if smaller). BLAS threads are whatever set_threads chose; num_threads is for SiLU * up.
    bf16 weights (uint16 bits, see pipeline.weights.BF16) go to ext.bf16.mlp_bf16.
    """
    if w_gate.dtype == np.uint16:
        from ext.bf16 import mlp_bf16
        return mlp_bf16(x, w_gate, w_up, w_down_t, out, ws, num_threads)
    T, d = x.shape
    I_r = w_gate.shape[0]
    _check("x", x, (T, d))
    _check("w_gate", w_gate, (I_r, d))
    _check("w_up", w_up, (I_r, d))
    _check("w_down_t", w_down_t, (I_r, d))
    _check("out", out, (T, d))
    if ws.I_r != I_r:
        raise ValueError(f"MLPWorkspace is for I_r={ws.I_r}, weights have I_r={I_r}")
    ws.reserve(T)
    gate = ws.gate[:T]   # (T, I_r)
    up = ws.up[:T]       # (T, I_r)
    if T == 1:
        # One token: BLAS's GEMV is about 10% faster here than a GEMM with one row.
        np.matmul(w_gate, x[0], out=gate[0])
        np.matmul(w_up, x[0], out=up[0])
        silu_mul(gate, up, num_threads)
        np.matmul(w_down_t.T, gate[0], out=out[0])
    else:
        np.matmul(x, w_gate.T, out=gate)
        np.matmul(x, w_up.T, out=up)
        silu_mul(gate, up, num_threads)
        np.matmul(gate, w_down_t, out=out)
