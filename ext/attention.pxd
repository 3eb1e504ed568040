# The one-query attention core of ext/attention.pyx, for ext/decode.pyx.

cdef int _attention_decode(const float *q, const float *k, const float *v, float *out,
                           float *m_out, float *l_out, Py_ssize_t kend, int H, int Hkv, int D,
                           float scale, bint online, float *scores, int n) noexcept nogil
