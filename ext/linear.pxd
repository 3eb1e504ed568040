# The GEMV cores of ext/linear.pyx that ext/decode.pyx calls without the Python wrappers.

cdef void _gemv_many(const float *x, int T, Py_ssize_t K, int m, const void **w,
                     const Py_ssize_t *N, float **out, int bf, int n) noexcept nogil
cdef void _gemvt(const float *x, int T, Py_ssize_t K, const void *w_t, Py_ssize_t N, float *out,
                 float *parts, int bf, int n) noexcept nogil
