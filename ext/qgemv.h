/* int8 GEMV at one token (decode): int8 weights with a float32 scale per output channel, the
   activation row quantized per token to int8 (s = max|x| / 127, as ext/dnnl.pyx does for oneDNN),
   products summed exactly in int32, one float epilogue per output:

       out[n] = (float)acc[n] * sx * scale[n],  acc[n] = sum_k xq[k] * q[n, k]   (exact)

   Two paths, chosen at run time (q8_cpu_vnni) and giving the same bits, since the int32 sums are
   exact whatever their order:
   - Q8_VNNI: AVX-512 VNNI vpdpbusd (u8 x s8 -> s32, 64 products per instruction). Its unsigned
     operand is the weights with the sign bit flipped, q + 128 (a xor), and the signed one the
     activations: sum (q + 128) x = sum q x + 128 sum x, so the correction is one scalar per row
     range (128 times the sum of xq), nothing precomputed per weight and no bound on q.
   - Q8_GENERIC: plain C loops that GCC vectorises for the machine's width (AVX2 and the rest).
   Compiled with target attributes, so the file builds on any x86-64 and the VNNI path runs only
   where __builtin_cpu_supports says so. Pasted into each cimporting module: static functions. */
#include <stdint.h>
#include <string.h>
#include "prefetch.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define Q8_X86 1
#endif

enum { Q8_GENERIC = 0, Q8_VNNI = 1 };
/* q8_cols' software prefetch: the four rows it reads at once are four streams, which the
   hardware prefetchers follow badly; prefetching their lines in memory order 8 KiB ahead read
   x1.7 faster (docs/design-notes.md#int8-gemv). */
#define Q8_PF_BYTES 8192

static int q8_cpu_vnni(void) {
#ifdef Q8_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

/* xq = round(x / s), s = max|x| / 127 (1 for a zero row): ext/dnnl.pyx's quantize_rows, one row. */
static float q8_quantize(const float *x, Py_ssize_t K, int8_t *xq) {
    const uint32_t *xb = (const uint32_t *)x;
    uint32_t amax = 0;
    for (Py_ssize_t k = 0; k < K; k++) {
        uint32_t a = xb[k] & 0x7FFFFFFFu;
        amax = a > amax ? a : amax;
    }
    float m;
    memcpy(&m, &amax, 4);
    float s = (float)((double)m / 127.0);
    if (!(s > 0)) s = 1.0f;
    float inv = (float)(1.0 / (double)s);
    for (Py_ssize_t k = 0; k < K; k++) xq[k] = (int8_t)(int)rintf(x[k] * inv);
    return s;
}

static inline float q8_out(int32_t acc, float sx, float scale) {
    return (float)acc * sx * scale;
}

/* ---- out = x @ q.T for rows n0 <= n < n1 of q (N, K) ---------------------------------------- */

static void q8_rows_generic(const int8_t *xq, float sx, const int8_t *q, Py_ssize_t K,
                            Py_ssize_t n0, Py_ssize_t n1, const float *scale, float *out) {
    for (Py_ssize_t n = n0; n < n1; n++) {
        const int8_t *w = q + n * K;
        int32_t s = 0;
        for (Py_ssize_t k = 0; k < K; k++) s += (int32_t)xq[k] * (int32_t)w[k];
        out[n] = q8_out(s, sx, scale[n]);
    }
}

#ifdef Q8_X86
/* One row at a time, four accumulators: one sequential stream per thread, which the hardware
   prefetchers follow. Four rows at once (four streams 1 KiB apart) read 2x slower on Zen 4, and a
   software prefetch gained nothing there (docs/design-notes.md#int8-gemv); on Intel it does
   (prefetch.h: pf bytes ahead, 0 = none). */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void q8_rows_vnni(const int8_t *xq, float sx, const int8_t *q, Py_ssize_t K,
                         Py_ssize_t n0, Py_ssize_t n1, const float *scale, float *out) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const long pf = rows_prefetch_bytes(ROWS_PF_INT8);
    const Py_ssize_t K64 = K & ~(Py_ssize_t)63, K256 = K & ~(Py_ssize_t)255;
    int32_t xsum = 0;   /* 128 * sum of xq over the vector part: the offset of q + 128 */
    for (Py_ssize_t k = 0; k < K64; k++) xsum += xq[k];
    xsum *= 128;
    for (Py_ssize_t n = n0; n < n1; n++) {
        const int8_t *w = q + n * K;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        Py_ssize_t k = 0;
        for (; k < K256; k += 256) {
            if (pf)
                for (int l = 0; l < 256; l += 64) ROWS_PREFETCH((const char *)w + k + pf + l);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_loadu_si512(w + k), flip),
                                     _mm512_loadu_si512(xq + k));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(_mm512_loadu_si512(w + k + 64), flip),
                                     _mm512_loadu_si512(xq + k + 64));
            a2 = _mm512_dpbusd_epi32(a2, _mm512_xor_si512(_mm512_loadu_si512(w + k + 128), flip),
                                     _mm512_loadu_si512(xq + k + 128));
            a3 = _mm512_dpbusd_epi32(a3, _mm512_xor_si512(_mm512_loadu_si512(w + k + 192), flip),
                                     _mm512_loadu_si512(xq + k + 192));
        }
        for (; k < K64; k += 64)
            a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_loadu_si512(w + k), flip),
                                     _mm512_loadu_si512(xq + k));
        a0 = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
        int32_t s = _mm512_reduce_add_epi32(a0) - xsum;
        for (; k < K; k++) s += (int32_t)xq[k] * (int32_t)w[k];
        out[n] = q8_out(s, sx, scale[n]);
    }
}
#endif

/* out[n] = x . q[n] for n0 <= n < n1 (one work item of a row-parallel product). */
static void q8_rows(const int8_t *xq, float sx, const int8_t *q, Py_ssize_t K, Py_ssize_t n0,
                    Py_ssize_t n1, const float *scale, float *out, int isa) {
#ifdef Q8_X86
    if (isa == Q8_VNNI) { q8_rows_vnni(xq, sx, q, K, n0, n1, scale, out); return; }
#endif
    q8_rows_generic(xq, sx, q, K, n0, n1, scale, out);
}

/* ---- acc = x[k0:k1] @ q_t[k0:k1] for q_t (K, N): int32 partial sums over a chunk of rows ---- */

static void q8_cols_generic(const int8_t *xq, const int8_t *q_t, Py_ssize_t N, Py_ssize_t k0,
                            Py_ssize_t k1, int32_t *acc) {
    memset(acc, 0, (size_t)N * sizeof(int32_t));
    for (Py_ssize_t k = k0; k < k1; k++) {
        const int32_t xv = xq[k];
        const int8_t *w = q_t + k * N;
        for (Py_ssize_t n = 0; n < N; n++) acc[n] += xv * (int32_t)w[n];
    }
}

#ifdef Q8_X86
/* Four rows k..k+3 at a time (a software prefetch keeps the stream in order): their bytes interleaved in
   registers (unpack 8 then 16 bits) so each 32-bit lane holds one column's four weights, as
   vpdpbusd wants, against the four activations broadcast. The unpacks work within 128-bit lanes,
   so lane i of vector j holds column 16 (i / 4) + 4 j + i % 4 of its 64: the accumulators keep
   that order in acc and are put back in column order once, at the end. */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void q8_cols_vnni(const int8_t *xq, const int8_t *q_t, Py_ssize_t N, Py_ssize_t k0,
                         Py_ssize_t k1, int32_t *acc) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const Py_ssize_t N64 = N & ~(Py_ssize_t)63;
    memset(acc, 0, (size_t)N * sizeof(int32_t));
    int32_t xsum = 0;
    Py_ssize_t k = k0;
    for (; k + 4 <= k1; k += 4) {
        int32_t x4;
        memcpy(&x4, xq + k, 4);
        xsum += xq[k] + xq[k + 1] + xq[k + 2] + xq[k + 3];
        const __m512i x = _mm512_set1_epi32(x4);
        const int8_t *w = q_t + k * N;
        for (Py_ssize_t c = 0; c < N64; c += 64) {
            const char *pf = (const char *)w + Q8_PF_BYTES + 4 * c;   /* the lines in order */
            _mm_prefetch(pf, _MM_HINT_T0);
            _mm_prefetch(pf + 64, _MM_HINT_T0);
            _mm_prefetch(pf + 128, _MM_HINT_T0);
            _mm_prefetch(pf + 192, _MM_HINT_T0);
            __m512i r0 = _mm512_xor_si512(_mm512_loadu_si512(w + c), flip);
            __m512i r1 = _mm512_xor_si512(_mm512_loadu_si512(w + N + c), flip);
            __m512i r2 = _mm512_xor_si512(_mm512_loadu_si512(w + 2 * N + c), flip);
            __m512i r3 = _mm512_xor_si512(_mm512_loadu_si512(w + 3 * N + c), flip);
            __m512i t0 = _mm512_unpacklo_epi8(r0, r1), t1 = _mm512_unpackhi_epi8(r0, r1);
            __m512i t2 = _mm512_unpacklo_epi8(r2, r3), t3 = _mm512_unpackhi_epi8(r2, r3);
            int32_t *a = acc + c;
            _mm512_storeu_si512(a, _mm512_dpbusd_epi32(_mm512_loadu_si512(a),
                                                      _mm512_unpacklo_epi16(t0, t2), x));
            _mm512_storeu_si512(a + 16, _mm512_dpbusd_epi32(_mm512_loadu_si512(a + 16),
                                                           _mm512_unpackhi_epi16(t0, t2), x));
            _mm512_storeu_si512(a + 32, _mm512_dpbusd_epi32(_mm512_loadu_si512(a + 32),
                                                           _mm512_unpacklo_epi16(t1, t3), x));
            _mm512_storeu_si512(a + 48, _mm512_dpbusd_epi32(_mm512_loadu_si512(a + 48),
                                                           _mm512_unpackhi_epi16(t1, t3), x));
        }
        for (Py_ssize_t c = N64; c < N; c++)
            for (int j = 0; j < 4; j++) acc[c] += (int32_t)xq[k + j] * (int32_t)w[j * N + c];
    }
    const int32_t off = 128 * xsum;
    for (Py_ssize_t c = 0; c < N64; c += 64) {   /* back to column order, minus the offset */
        int32_t t[64];
        for (int j = 0; j < 4; j++)
            for (int i = 0; i < 16; i++) t[16 * (i / 4) + 4 * j + i % 4] = acc[c + 16 * j + i] - off;
        memcpy(acc + c, t, sizeof t);
    }
    for (; k < k1; k++)   /* the chunk's last rows, fewer than four */
        for (Py_ssize_t c = 0; c < N; c++) acc[c] += (int32_t)xq[k] * (int32_t)q_t[k * N + c];
}
#endif

static void q8_cols(const int8_t *xq, const int8_t *q_t, Py_ssize_t N, Py_ssize_t k0,
                    Py_ssize_t k1, int32_t *acc, int isa) {
#ifdef Q8_X86
    if (isa == Q8_VNNI) { q8_cols_vnni(xq, q_t, N, k0, k1, acc); return; }
#endif
    q8_cols_generic(xq, q_t, N, k0, k1, acc);
}

/* out[n] = (sum over the nchunks int32 partials of n) * sx * scale[n]: exact integer sums. */
static void q8_reduce(const int32_t *parts, Py_ssize_t nchunks, Py_ssize_t N, float sx,
                      const float *scale, float *out) {
    for (Py_ssize_t n = 0; n < N; n++) {
        int32_t s = parts[n];
        for (Py_ssize_t ch = 1; ch < nchunks; ch++) s += parts[ch * N + n];
        out[n] = q8_out(s, sx, scale[n]);
    }
}
