# The GEMV core of the few-token (decode) linear layers and MLP, as C: ext/linear.pyx and
# ext/mlp.pyx cimport it. Weights are float32 or bfloat16 bit patterns (uint16, widened on the fly:
# bits << 16 is the float32 of the same value, exactly); `bf` says which. Every function takes it
# at run time and dispatches once to a copy compiled for that type (always_inline + a constant).
# Each thread streams whole weight rows, one sequential prefetched stream: memory bound, so bf16
# (half the bytes) runs up to twice as fast as float32. The callers hand the row blocks out with
# a static schedule, one contiguous run per thread: a dynamic one interleaves 128 KiB blocks
# between the threads and breaks every thread's stream at each block, and decode ran slower
# (docs/design-notes.md#static-schedule). Work items are fixed by the shapes, never
# by the thread count, so results do not depend on num_threads, bit for bit.

from ext.simd cimport vf

cdef extern from * nogil:
    """
    /* Software prefetch distance, in bytes (16 KiB) ahead of the read position. One sequential
       stream per thread plus this prefetch reads bf16 fastest, with AVX-512 and with AVX2:
       several interleaved row streams (a rows x tokens register tile, or 8 rows at once) read it
       1.5-3x slower (docs/design-notes.md#prefetch). float32 at one token reads one row with an
       L2 prefetch where prefetch.h gives it a distance (AMD with AVX-512: gemv_row_l2) and 8 rows at
       once elsewhere (gemv_8rows, axpy_8rows: docs/design-notes.md#gemv-8rows, #f32-row-prefetch). */
    #define PF_BYTES 16384
    #define ALWAYS_INLINE static inline __attribute__((always_inline))

    /* Hand-offs between the loops of one parallel region without a barrier: a barrier can put
       the early threads to sleep, and waking them costs more than a whole 2 MiB GEMV takes
       (docs/design-notes.md#no-barriers). Instead, the thread that
       completes the last item of a loop (counted atomically) does the short serial step, and
       threads that need its result spin on a flag for the few microseconds that takes. */
    static inline int last_done(int *counter, int total) {
        return __atomic_add_fetch(counter, 1, __ATOMIC_ACQ_REL) == total;
    }
    static inline void set_flag(int *flag) { __atomic_store_n(flag, 1, __ATOMIC_RELEASE); }
    static inline void wait_flag(int *flag) {
        while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
    #if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
    #endif
        }
    }

    /* ---- bf16 on the bf16 units (AVX512_BF16), one token ------------------------------------
       With 2 MiB pages (docs/design-notes.md#huge-folios) a bf16 row read through vdpbf16ps (the
       activations rounded to bf16 once per product, 64 bytes of weights per instruction) streamed
       x1.09-1.24 faster than widening each weight to float32 for an FMA (#bf16-units). Products
       of two bf16 are exact in float32, so the only new rounding is the activations', which
       oneDNN's bf16 matmul makes too. At one token every bf16 product (rows and transposed)
       rounds its activations where the CPU has the units, so the fused decode stack and the per-op
       path stay within float32 rounding of each other; elsewhere (2-7 tokens, no units) the
       weights are widened against float32 activations. */
    static int bf16_units(void) {
    #if defined(__x86_64__) && defined(__GNUC__)
        static int have = -1;
        if (have < 0) {
            __builtin_cpu_init();
            have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                   && __builtin_cpu_supports("avx512bf16");
        }
        return have;
    #else
        return 0;
    #endif
    }
    /* f rounded to bf16 and back (ext/simd.pxd's bf16_bits, the rounding oneDNN's path makes too) */
    static inline float bf16_round(float f) { return bf16f(bf16_bits(f)); }

    #include "prefetch.h"
    #if defined(__x86_64__) && defined(__GNUC__)
    #include <immintrin.h>
    /* out[n] = sum_k bf16(x[k]) w[n*K + k] for n0 <= n < n1: x rounded into xb once, then each row
       one sequential stream, 64 weights per step in two accumulators, prefetched pf bytes ahead
       where that helps (prefetch.h: on Intel, into L2 4 KiB ahead). */
    __attribute__((target("avx512f,avx512bw,avx512bf16")))
    static void gemv_rows_bf16_units(const float *x, const unsigned short *w, Py_ssize_t K,
                                     Py_ssize_t n0, Py_ssize_t n1, float *out) {
        unsigned short xb[K + 1];   /* K <= the model's widest input: a few KiB of stack */
        Py_ssize_t k = 0;
        for (; k + 32 <= K; k += 32)
            _mm512_storeu_si512(xb + k, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16),
                                                                    _mm512_loadu_ps(x + k)));
        for (; k < K; k++) xb[k] = bf16_bits(x[k]);
        const Py_ssize_t K64 = K & ~(Py_ssize_t)63, K32 = K & ~(Py_ssize_t)31;
        const long pf = rows_prefetch_bytes(ROWS_PF_BF16);
        for (Py_ssize_t n = n0; n < n1; n++) {
            const unsigned short *r = w + n * K;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0;
            for (k = 0; k < K64; k += 64) {
                if (pf) {   /* the two 64-byte lines this step reads, pf bytes on */
                    ROWS_PREFETCH((const char *)(r + k) + pf);
                    ROWS_PREFETCH((const char *)(r + k) + pf + 64);
                }
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(r + k),
                                      (__m512bh)_mm512_loadu_si512(xb + k));
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(r + k + 32),
                                      (__m512bh)_mm512_loadu_si512(xb + k + 32));
            }
            for (; k < K32; k += 32)
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(r + k),
                                      (__m512bh)_mm512_loadu_si512(xb + k));
            float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
            for (; k < K; k++) s += bf16f(xb[k]) * bf16f(r[k]);
            out[n] = s;
        }
    }
    #endif

    /* VL weights from element i of w, widened to float32; bf: the weights are bf16 bits. */
    ALWAYS_INLINE vf ldw(const void *w, Py_ssize_t i, const int bf) {
        return bf ? ldbfv((const unsigned short *)w + i) : vld((const float *)w + i);
    }
    ALWAYS_INLINE float ldw1(const void *w, Py_ssize_t i, const int bf) {
        return bf ? bf16f(((const unsigned short *)w)[i]) : ((const float *)w)[i];
    }
    ALWAYS_INLINE const void *w_at(const void *w, Py_ssize_t i, const int bf) {
        return (const char *)w + i * (bf ? 2 : 4);
    }
    /* One prefetch per 64-byte line: every 16 floats, every 32 bf16. */
    ALWAYS_INLINE void prefetch_w(const void *w, Py_ssize_t i, const int bf) {
        __builtin_prefetch((const char *)w_at(w, i, bf) + PF_BYTES);
    }

    /* out[t*ldo] = sum_k x[t*ldx + k] * w[k] for t < TT: one weight row streamed once, U vectors
       per step and token (U * TT <= 8 independent accumulators); TT, U, bf constant at each call. */
    ALWAYS_INLINE void gemv_row(const float *x, Py_ssize_t ldx, const void *w, Py_ssize_t K,
                                float *out, Py_ssize_t ldo, const int TT, const int U, const int bf) {
        vf acc[8];
        for (int i = 0; i < U * TT; i++) acc[i] = (vf){0};
        Py_ssize_t k = 0;
        for (; k + VL * U <= K; k += VL * U) {
            if (TT > 1)   /* at one token the prefetch halved bf16's rate on Zen 4 (#prefetch) */
                for (int u = 0; u < VL * U; u += (bf ? 32 : 16)) prefetch_w(w, k + u, bf);
            for (int u = 0; u < U; u++) {
                vf wv = ldw(w, k + VL * u, bf);
                for (int t = 0; t < TT; t++) acc[t * U + u] += vld(x + t * ldx + k + VL * u) * wv;
            }
        }
        for (; k + VL <= K; k += VL) {
            vf wv = ldw(w, k, bf);
            for (int t = 0; t < TT; t++) acc[t * U] += vld(x + t * ldx + k) * wv;
        }
        for (int t = 0; t < TT; t++) {
            vf a = acc[t * U];
            for (int u = 1; u < U; u++) a += acc[t * U + u];
            float s = hsumv(a);
            for (Py_ssize_t kk = k; kk < K; kk++) s += x[t * ldx + kk] * ldw1(w, kk, bf);
            out[t * ldo] = s;
        }
    }

    /* out[r] = sum_k x[k] w[r*K + k] for 8 float32 rows r (one token): eight weight streams,
       which the hardware prefetchers follow: faster for float32 than one row at a time with the
       software prefetch, in the GEMV alone and in the engine's decode step
       (docs/design-notes.md#gemv-8rows). */
    ALWAYS_INLINE void gemv_8rows(const float *x, const float *w, Py_ssize_t K, float *out) {
        vf acc[8];
        for (int r = 0; r < 8; r++) acc[r] = (vf){0};
        Py_ssize_t k = 0;
        for (; k + VL <= K; k += VL) {
            vf xv = vld(x + k);
            for (int r = 0; r < 8; r++) acc[r] += vld(w + r * K + k) * xv;
        }
        for (int r = 0; r < 8; r++) {
            float s = hsumv(acc[r]);
            for (Py_ssize_t kk = k; kk < K; kk++) s += x[kk] * w[r * K + kk];
            out[r] = s;
        }
    }

    /* out = sum_k x[k] w[k] for one float32 row (one token): one sequential stream, four
       accumulators, each 64-byte line prefetched into L2 pf bytes ahead (prefetch.h says where). */
    ALWAYS_INLINE float gemv_row_l2(const float *x, const float *w, Py_ssize_t K, long pf) {
        vf acc[4] = {{0}, {0}, {0}, {0}};
        Py_ssize_t k = 0;
        for (; k + 4 * VL <= K; k += 4 * VL) {
            for (int u = 0; u < 4 * VL; u += 16)   /* locality 2: prefetcht1, into L2 */
                __builtin_prefetch((const char *)(w + k + u) + pf, 0, 2);
            for (int u = 0; u < 4; u++) acc[u] += vld(x + k + VL * u) * vld(w + k + VL * u);
        }
        for (; k + VL <= K; k += VL) acc[0] += vld(x + k) * vld(w + k);
        float s = hsumv((acc[0] + acc[1]) + (acc[2] + acc[3]));
        for (; k < K; k++) s += x[k] * w[k];
        return s;
    }

    #define GEMV_ROWS(TT, U) for (Py_ssize_t n = n0; n < n1; n++) \
        gemv_row(x, ldx, w_at(w, n * K, bf), K, out + n, ldo, TT, U, bf);

    /* out[t*ldo + n] = sum_k x[t*ldx + k] w[n*K + k] for n0 <= n < n1, t < T: groups of up to 8
       tokens, each group one pass over the rows (from L2 after the first: a block is <= 256 KiB). */
    ALWAYS_INLINE void gemv_rows_as(const float *x, int T, Py_ssize_t ldx, const void *w,
                                    Py_ssize_t K, Py_ssize_t n0, Py_ssize_t n1, float *out,
                                    Py_ssize_t ldo, const int bf) {
        for (int t0 = 0; t0 < T; t0 += 8, x += 8 * ldx, out += 8 * ldo) {
            switch (T - t0 < 8 ? T - t0 : 8) {
                case 1: {
                    Py_ssize_t n = n0;
    #if defined(__x86_64__) && defined(__GNUC__)
                    if (bf && bf16_units()) {
                        gemv_rows_bf16_units(x, (const unsigned short *)w, K, n0, n1, out);
                        break;
                    }
    #endif
                    const long pf = bf ? 0 : rows_prefetch_bytes(ROWS_PF_F32);
                    if (!bf && pf)
                        for (; n < n1; n++) out[n] = gemv_row_l2(x, (const float *)w + n * K, K, pf);
                    if (!bf)
                        for (; n + 8 <= n1; n += 8) gemv_8rows(x, (const float *)w + n * K, K, out + n);
                    for (; n < n1; n++) gemv_row(x, ldx, w_at(w, n * K, bf), K, out + n, ldo, 1, 4, bf);
                    break;
                }
                case 2: GEMV_ROWS(2, 4) break;
                case 3: GEMV_ROWS(3, 2) break;
                case 4: GEMV_ROWS(4, 2) break;
                case 5: GEMV_ROWS(5, 1) break;
                case 6: GEMV_ROWS(6, 1) break;
                case 7: GEMV_ROWS(7, 1) break;
                default: GEMV_ROWS(8, 1) break;
            }
        }
    }
    static void gemv_rows(const float *x, int T, Py_ssize_t ldx, const void *w, Py_ssize_t K,
                          Py_ssize_t n0, Py_ssize_t n1, float *out, Py_ssize_t ldo, int bf) {
        if (bf) gemv_rows_as(x, T, ldx, w, K, n0, n1, out, ldo, 1);
        else gemv_rows_as(x, T, ldx, w, K, n0, n1, out, ldo, 0);
    }

    /* o[c] += a * w[c] for c < N: one weight row (streamed, prefetched) into one output row. */
    ALWAYS_INLINE void axpy_w(float a, const void *w, Py_ssize_t N, float *o, const int bf) {
        Py_ssize_t c = 0;
        for (; c + 32 <= N; c += 32) {
            prefetch_w(w, c, bf);
            if (!bf) prefetch_w(w, c + 16, bf);
            for (int j = 0; j < 32; j += VL) vst(o + c + j, vld(o + c + j) + ldw(w, c + j, bf) * a);
        }
        for (; c + VL <= N; c += VL) vst(o + c, vld(o + c) + ldw(w, c, bf) * a);
        for (; c < N; c++) o[c] += ldw1(w, c, bf) * a;
    }

    /* o[c] += sum_r a[r] * w[r*N + c] for 8 rows r, added in row order (the bits of eight
       axpy_w calls): eight weight streams, o loaded and stored once per 8 rows. */
    ALWAYS_INLINE void axpy_8rows(const float *a, const void *w, Py_ssize_t N, float *o,
                                  const int bf) {
        Py_ssize_t c = 0;
        for (; c + VL <= N; c += VL) {
            vf s = vld(o + c);
            for (int r = 0; r < 8; r++) s += ldw(w, r * N + c, bf) * a[r];
            vst(o + c, s);
        }
        for (; c < N; c++)
            for (int r = 0; r < 8; r++) o[c] += ldw1(w, r * N + c, bf) * a[r];
    }

    /* p[t*N + c] = sum_{k0 <= k < k1} x[t*ldx + k] w[k*N + c] for t < T, c < N; w (K, N). */
    ALWAYS_INLINE void gemvt_rows_as(const float *x, int T, Py_ssize_t ldx, const void *w,
                                     Py_ssize_t N, Py_ssize_t k0, Py_ssize_t k1, float *p,
                                     const int bf) {
        memset(p, 0, (size_t)T * N * sizeof(float));
        const int round = T == 1 && bf && bf16_units();   /* as gemv_rows_bf16_units rounds x */
        if (T == 1)   /* bf16 too: x1.24 over one row at a time on Zen 4 (#gemv-8rows) */
            for (; k0 + 8 <= k1; k0 += 8) {
                float a[8];
                for (int r = 0; r < 8; r++) a[r] = round ? bf16_round(x[k0 + r]) : x[k0 + r];
                axpy_8rows(a, w_at(w, k0 * N, bf), N, p, bf);
            }
        for (Py_ssize_t k = k0; k < k1; k++)
            for (int t = 0; t < T; t++)
                axpy_w(round ? bf16_round(x[k]) : x[t * ldx + k], w_at(w, k * N, bf), N,
                       p + (Py_ssize_t)t * N, bf);
    }
    static void gemvt_rows(const float *x, int T, Py_ssize_t ldx, const void *w, Py_ssize_t N,
                           Py_ssize_t k0, Py_ssize_t k1, float *p, int bf) {
        if (bf) gemvt_rows_as(x, T, ldx, w, N, k0, k1, p, 1);
        else gemvt_rows_as(x, T, ldx, w, N, k0, k1, p, 0);
    }

    /* out[i] = sum over chunks ch, in order, of parts[ch*n + i], i < n. */
    static void reduce_parts(const float *parts, Py_ssize_t nchunks, Py_ssize_t n, float *out) {
        memcpy(out, parts, n * sizeof(float));
        for (Py_ssize_t ch = 1; ch < nchunks; ch++) {
            const float *p = parts + ch * n;
            Py_ssize_t i = 0;
            for (; i + VL <= n; i += VL) vst(out + i, vld(out + i) + vld(p + i));
            for (; i < n; i++) out[i] += p[i];
        }
    }
    """
    bint bf16_units()
    bint last_done(int *counter, int total)
    void set_flag(int *flag)
    void wait_flag(int *flag)
    void gemv_rows(const float *x, int T, Py_ssize_t ldx, const void *w, Py_ssize_t K,
                   Py_ssize_t n0, Py_ssize_t n1, float *out, Py_ssize_t ldo, int bf)
    void gemvt_rows(const float *x, int T, Py_ssize_t ldx, const void *w, Py_ssize_t N,
                    Py_ssize_t k0, Py_ssize_t k1, float *p, int bf)
    void reduce_parts(const float *parts, Py_ssize_t nchunks, Py_ssize_t n, float *out)

cdef enum:
    SMALL_T = 16       # up to this many tokens: our SIMD GEMV; more: BLAS (GEMM)
    ROW_BLOCK = 64     # weight rows per parallel work item of the GEMV (out = x @ w.T)
    K_CHUNK = 128      # weight rows per partial sum of the transposed GEMV (out = x @ w_t)


cdef inline Py_ssize_t nchunks_of(Py_ssize_t K) noexcept nogil:
    """Row chunks of a transposed weight with K rows: set by K alone, never by the thread count."""
    return K // K_CHUNK if K >= 2 * K_CHUNK else 1
