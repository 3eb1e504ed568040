# The few-token MLP core of ext/mlp.pyx, for ext/decode.pyx.

cdef void _mlp_small(const float *x, Py_ssize_t T, Py_ssize_t d, Py_ssize_t I, const void *wg,
                     const void *wu, const void *wd, float *gate, float *up, float *out,
                     float *parts, int bf, int n) noexcept nogil
