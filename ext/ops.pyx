"""Fused elementwise ops around the GEMMs: RMSNorm, residual add + RMSNorm, q/k norm + RoPE; and
the streaming read a decode step is measured against (stream_read).

Each is one pass over a row, parallel over rows; sums of squares go through VL float lanes whose
partial sums are added in double (vectorised, and well inside the 1e-5 relative contract).
"""

import numpy as np

from cython.parallel cimport parallel, prange
from libc.stdint cimport uint64_t, uintptr_t
from libc.stdlib cimport free, malloc

from ext.rows cimport norm_row as _norm_row
from ext.rows cimport rope_row
from ext.simd cimport VL

cdef enum:
    # Below this many elements an op runs on the calling thread: a decode step's norms (a few
    # thousand floats, a microsecond) cost less than waking an OpenMP thread (docs/design-notes.md#spin).
    PARALLEL_MIN = 32768


cdef inline int _threads_for(Py_ssize_t elems, int n) noexcept nogil:
    return n if elems >= PARALLEL_MIN else 1


def vector_lanes() -> int:
    """float32 lanes per SIMD vector the kernels were compiled for: 16 (AVX-512), 8 (AVX2) or 4."""
    return VL


def rope_table(Py_ssize_t max_pos, int D, double theta):
    """cos, sin (max_pos, D//2) of pos * theta^(-2i/D), computed in float64, returned as float32."""
    if D % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {D}")
    inv_freq = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)         # (D/2,)
    angles = np.arange(max_pos, dtype=np.float64)[:, None] * inv_freq[None]  # (max_pos, D/2)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


cdef void _rmsnorm(const float[:, ::1] x, const float[::1] w, float eps, float[:, ::1] out,
                   int n) noexcept nogil:
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w."""
    cdef Py_ssize_t t, d = x.shape[1]
    n = _threads_for(x.shape[0] * d, n)
    with nogil, parallel(num_threads=n):
        for t in prange(x.shape[0], schedule="static"):
            _norm_row(&x[t, 0], &w[0], eps, &out[t, 0], d)


def rmsnorm(const float[:, ::1] x, const float[::1] w, float eps, float[:, ::1] out, int num_threads=1):
    """out = x / sqrt(mean(x^2, axis=-1) + eps) * w; x, out (T, d), w (d,)."""
    _check_rows(x.shape[0], x.shape[1], w.shape[0], out.shape[0], out.shape[1], num_threads)
    if x.shape[0] and x.shape[1]:
        _rmsnorm(x, w, eps, out, num_threads)


cdef void _add_rmsnorm(float[:, ::1] x, const float[:, ::1] delta, const float[::1] w, float eps,
                       float[:, ::1] out, int n) noexcept nogil:
    """x[t] += delta[t]; out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w."""
    cdef Py_ssize_t t, i, d = x.shape[1]
    n = _threads_for(x.shape[0] * d, n)
    with nogil, parallel(num_threads=n):
        for t in prange(x.shape[0], schedule="static"):
            for i in range(d):
                x[t, i] = x[t, i] + delta[t, i]
            _norm_row(&x[t, 0], &w[0], eps, &out[t, 0], d)


def add_rmsnorm(float[:, ::1] x, const float[:, ::1] delta, const float[::1] w, float eps,
                float[:, ::1] out, int num_threads=1):
    """x += delta (the residual, in place); out = x / sqrt(mean(x^2, axis=-1) + eps) * w."""
    _check_rows(x.shape[0], x.shape[1], w.shape[0], out.shape[0], out.shape[1], num_threads)
    if (delta.shape[0], delta.shape[1]) != (x.shape[0], x.shape[1]):
        raise ValueError(f"delta shape {(delta.shape[0], delta.shape[1])} != x shape {(x.shape[0], x.shape[1])}")
    if x.shape[0] and x.shape[1]:
        _add_rmsnorm(x, delta, w, eps, out, num_threads)


cdef void _qk_norm_rope(float[:, :, ::1] x, const float[::1] w, float eps, const float[:, ::1] cos,
                        const float[:, ::1] sin, Py_ssize_t pos0, int n) noexcept nogil:
    """x[t,h] = rope(x[t,h] / sqrt(mean(x[t,h]^2) + eps) * w, pos0 + t) with HF's rotate_half."""
    cdef Py_ssize_t nh = x.shape[1], D = x.shape[2], half = x.shape[2] // 2
    cdef Py_ssize_t row, t, h
    n = _threads_for(x.shape[0] * nh * D, n)
    with nogil, parallel(num_threads=n):
        for row in prange(x.shape[0] * nh, schedule="static"):
            t = row // nh
            h = row % nh
            _norm_row(&x[t, h, 0], &w[0], eps, &x[t, h, 0], D)
            rope_row(&x[t, h, 0], &cos[pos0 + t, 0], &sin[pos0 + t, 0], half)


def qk_norm_rope(float[:, :, ::1] x, const float[::1] w, float eps, const float[:, ::1] cos,
                 const float[:, ::1] sin, Py_ssize_t pos0, int num_threads=1):
    """x (T, nh, D) in place: per-head RMSNorm over D times w, then RoPE at position pos0 + t.

    RoPE (HF rotate_half): for i < D/2, x[i] <- x[i] cos - x[i+D/2] sin, x[i+D/2] <- x[i+D/2] cos + x[i] sin,
    with cos, sin = rope_table(...)[pos0 + t].
    """
    T, D = x.shape[0], x.shape[2]
    if w.shape[0] != D or D % 2:
        raise ValueError(f"w has {w.shape[0]} entries for head_dim {D} (must match and be even)")
    if cos.shape[1] != D // 2 or sin.shape[1] != D // 2 or cos.shape[0] != sin.shape[0]:
        raise ValueError(f"cos/sin must be (max_pos, {D // 2}), got {(cos.shape[0], cos.shape[1])}, "
                         f"{(sin.shape[0], sin.shape[1])}")
    if pos0 < 0 or pos0 + T > cos.shape[0]:
        raise ValueError(f"positions {pos0}..{pos0 + T - 1} outside the RoPE table (max_pos {cos.shape[0]})")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if T and x.shape[1] and D:
        _qk_norm_rope(x, w, eps, cos, sin, pos0, num_threads)


def _check_rows(T, d, dw, To, do, num_threads):
    if dw != d or (To, do) != (T, d):
        raise ValueError(f"rmsnorm shapes: x {(T, d)}, w {(dw,)}, out {(To, do)}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")


cdef extern from *:
    """
    /* 64-byte vectors (one zmm under AVX-512, two ymm under AVX2), 8-byte aligned, so unaligned
       loads; four accumulators, 256 bytes a step, as a plain streaming loop is written. */
    typedef uint64_t stream_v8 __attribute__((vector_size(64), aligned(8)));
    static uint64_t stream_words(const uint64_t *p, Py_ssize_t n) {
        stream_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        const stream_v8 *v = (const stream_v8 *)p;
        Py_ssize_t i = 0, nv = n / 32;
        for (; i < nv; i++) {
            a0 += v[4 * i]; a1 += v[4 * i + 1]; a2 += v[4 * i + 2]; a3 += v[4 * i + 3];
        }
        a0 += a1 + a2 + a3;
        uint64_t s = 0;
        for (int j = 0; j < 8; j++) s += a0[j];
        for (Py_ssize_t k = 32 * nv; k < n; k++) s += p[k];
        return s;
    }
    """
    uint64_t stream_words(const uint64_t *p, Py_ssize_t n) nogil


cdef class StreamSet:
    """A fixed set of C-contiguous arrays to read once per call with nothing but loads: the memory
    a decode step streams, its ceiling. Each array's 8-byte-aligned words are split statically over
    the threads (thread t reads block t of every array, as the decode kernels split their rows), in
    one OpenMP region: per-call Python and a region per array cost ~1.5 us each, 0.5 ms over a
    0.6B model's 300 arrays, which lowered the ceiling (docs/design-notes.md#stream-ceiling)."""
    cdef const uint64_t **starts
    cdef Py_ssize_t *words
    cdef Py_ssize_t n
    cdef object keep   # the arrays, alive as long as this object

    def __cinit__(self):
        self.starts, self.words, self.n = NULL, NULL, 0

    def __init__(self, arrays):
        cdef const unsigned char[::1] b
        cdef uintptr_t start, stop
        spans = []
        for a in arrays:
            if not a.flags.c_contiguous:
                raise ValueError(f"stream_read needs C-contiguous arrays, got one of strides {a.strides}")
            if a.nbytes < 8:
                continue
            b = a.reshape(-1).view(np.uint8)
            start = (<uintptr_t>&b[0] + 7) & ~(<uintptr_t>7)
            stop = (<uintptr_t>&b[0] + <uintptr_t>b.shape[0]) & ~(<uintptr_t>7)
            if stop > start:
                spans.append((start, (stop - start) // 8))
        self.starts = <const uint64_t **>malloc(max(1, len(spans)) * sizeof(uint64_t *))
        self.words = <Py_ssize_t *>malloc(max(1, len(spans)) * sizeof(Py_ssize_t))
        if self.starts == NULL or self.words == NULL:
            raise MemoryError("StreamSet: no memory for the table of arrays")
        for j, (start, count) in enumerate(spans):
            self.starts[j], self.words[j] = <const uint64_t *><uintptr_t>start, count
        self.n, self.keep = len(spans), list(arrays)

    def __dealloc__(self):
        free(self.starts)
        free(self.words)

    @property
    def nbytes(self) -> int:
        """Bytes one read() loads: every array's aligned words."""
        return 8 * sum(self.words[j] for j in range(self.n))

    def read(self, int num_threads=1) -> int:
        """Read every word once with `num_threads` threads; returns their sum modulo 2^64, so the
        reads happen."""
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        cdef uint64_t s = 0
        cdef Py_ssize_t t, j, lo, hi
        if self.n == 0:
            return 0
        with nogil:
            for t in prange(num_threads, num_threads=num_threads, schedule="static", chunksize=1):
                for j in range(self.n):
                    lo = self.words[j] * t // num_threads
                    hi = self.words[j] * (t + 1) // num_threads
                    s += stream_words(self.starts[j] + lo, hi - lo)
        return s


def stream_read(arrays, int num_threads=1) -> int:
    """Read every 8-byte-aligned word of each C-contiguous array once with `num_threads` threads
    (StreamSet(arrays).read: keep a StreamSet to read the same arrays again without its set-up);
    returns the words' sum modulo 2^64."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return StreamSet(arrays).read(num_threads)
