# The GEMV cores of ext/linear.pyx that ext/decode.pyx calls without the Python wrappers.

cdef void _gemv_many(const float *x, int T, Py_ssize_t K, int m, const void **w,
                     const Py_ssize_t *N, float **out, int bf, int n) noexcept nogil
cdef void _gemvt(const float *x, int T, Py_ssize_t K, const void *w_t, Py_ssize_t N, float *out,
                 float *parts, int bf, int n) noexcept nogil

from libc.stdint cimport int8_t, int32_t

cdef int q8_isa() noexcept nogil
cdef void _q8_gemv_many(const int8_t *xq, float sx, Py_ssize_t K, int m, const void **w,
                        const float **scale, const Py_ssize_t *N, float **out, int isa,
                        int n) noexcept nogil
cdef void _q8_gemvt(const int8_t *xq, float sx, Py_ssize_t K, const int8_t *w_t, Py_ssize_t N,
                    const float *scale, float *out, int32_t *parts, int isa, int n) noexcept nogil
