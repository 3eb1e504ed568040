# Row operations shared by ext/ops.pyx and ext/decode.pyx, inline (pasted into each cimporter):
# one definition, so the per-op path and the fused decode step compute the same bits.

from libc.math cimport sqrt

from ext.simd cimport sumsq_f32


cdef inline void norm_row(const float *x, const float *w, float eps, float *out,
                          Py_ssize_t d) noexcept nogil:
    """out = x / sqrt(mean(x^2) + eps) * w (out may be x)."""
    cdef Py_ssize_t i
    cdef float inv = <float>(1.0 / sqrt(sumsq_f32(x, d) / d + eps))
    for i in range(d):
        out[i] = x[i] * inv * w[i]


cdef inline void rope_row(float *x, const float *cos, const float *sin, Py_ssize_t half) noexcept nogil:
    """HF's rotate_half RoPE of one head in place: x[i], x[i+half] rotated by (cos[i], sin[i])."""
    cdef Py_ssize_t i
    cdef float a, b, c, s
    for i in range(half):
        a = x[i]
        b = x[i + half]
        c = cos[i]
        s = sin[i]
        x[i] = a * c - b * s
        x[i + half] = b * c + a * s
