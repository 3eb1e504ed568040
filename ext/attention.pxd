# The one-query attention core of ext/attention.pyx, for ext/decode.pyx.

cdef Py_ssize_t _decode_work(Py_ssize_t kend, int H, int D, int n, bint online) noexcept nogil
cdef void _attention_decode(const float *q, const float *k, const float *v, float *out,
                            float *m_out, float *l_out, Py_ssize_t kend, int H, int Hkv, int D,
                            float scale, bint online, float *scores, float *work,
                            int n) noexcept nogil
