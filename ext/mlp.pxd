# The few-token MLP core of ext/mlp.pyx, for ext/decode.pyx.

cdef void _mlp_small(const float *x, Py_ssize_t T, Py_ssize_t d, Py_ssize_t I, const void *wg,
                     const void *wu, const void *wd, float *gate, float *up, float *out,
                     float *parts, int bf, int down_rows, int n) noexcept nogil

from libc.stdint cimport int8_t

cdef void _q8_mlp(const int8_t *xq, float sx, Py_ssize_t d, Py_ssize_t I, const int8_t *wg,
                  const float *sg, const int8_t *wu, const float *su, const int8_t *wd,
                  const float *sd, float *gate, float *up, int8_t *gq, float *out, int isa,
                  int n) noexcept nogil
