# The int8 GEMV cores of ext/qgemv.h (C, pasted into each cimporter): ext/linear.pyx, ext/mlp.pyx
# and ext/decode.pyx run them; the header says what they compute and why they are exact.

from libc.stdint cimport int8_t, int32_t

cdef extern from "qgemv.h" nogil:
    enum:
        Q8_GENERIC
        Q8_VNNI
    int q8_cpu_vnni()
    float q8_quantize(const float *x, Py_ssize_t K, int8_t *xq)
    void q8_rows(const int8_t *xq, float sx, const int8_t *q, Py_ssize_t K, Py_ssize_t n0,
                 Py_ssize_t n1, const float *scale, float *out, int isa)
    void q8_cols(const int8_t *xq, const int8_t *q_t, Py_ssize_t N, Py_ssize_t k0, Py_ssize_t k1,
                 int32_t *acc, int isa)
    void q8_reduce(const int32_t *parts, Py_ssize_t nchunks, Py_ssize_t N, float sx,
                   const float *scale, float *out)
