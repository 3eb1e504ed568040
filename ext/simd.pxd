# Vector helpers shared by the kernels, as C (GCC/Clang vector extensions): 16 float lanes, one
# AVX-512 register or two AVX2 ones. Cython cannot express register tiles, and without -ffast-math
# GCC neither vectorises float reductions nor calls a vector expf, so these are written out.
# Cimporting anything from here pastes the C below into the cimporting module.

cdef extern from * nogil:
    """
    #include <math.h>
    #include <string.h>
    #pragma GCC diagnostic ignored "-Wpsabi"   /* static helpers only: no ABI crosses a call */
    typedef float f32x16 __attribute__((vector_size(64)));
    static inline f32x16 ld16(const float *p) { f32x16 v; memcpy(&v, p, 64); return v; }
    static inline void st16(float *p, f32x16 v) { memcpy(p, &v, 64); }
    /* Keep v in a register: GCC otherwise re-reads a reused operand from memory for every FMA
       (as a memory operand), which makes register tiles load-bound. */
    #if defined(__GNUC__) && defined(__AVX512F__)   /* a 64-byte vector fits one register */
    #define IN_REG(v) __asm__("" : "+v"(v))
    #else
    #define IN_REG(v) ((void)0)
    #endif
    /* Hint the cache to fetch n floats at p. Rows of one KV head are Hkv*D floats apart, each
       in its own 4 KiB page, where the hardware stream prefetchers stop: decode must ask. */
    static inline void prefetch_floats(const float *p, int n) {
        for (int i = 0; i < n; i += 16) __builtin_prefetch(p + i);
    }
    /* Sum of the 16 lanes by halving (4 shuffle + add steps, not 15 dependent scalar adds):
       decode attention takes one per query head and key. */
    typedef float f32x8 __attribute__((vector_size(32)));
    typedef float f32x4 __attribute__((vector_size(16)));
    static inline float hsum16(f32x16 v) {
        f32x8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
                + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
        f32x4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
        return (b[0] + b[2]) + (b[1] + b[3]);
    }

    typedef int i32x16 __attribute__((vector_size(64)));
    static inline i32x16 ldi16(const int *p) { i32x16 v; memcpy(&v, p, 64); return v; }
    static inline f32x16 sel16(i32x16 m, f32x16 a, f32x16 b) {
        return (f32x16)(((i32x16)a & m) | ((i32x16)b & ~m));
    }
    static inline f32x16 max16(f32x16 a, f32x16 b) { return sel16(a > b, a, b); }

    /* e^x for 16 lanes, ~1 ulp on [-87.3, 88] and 0 below: x = n ln2 + f, |f| <= ln2/2,
       e^x = 2^n (degree-7 Taylor of e^f). A scalar expf per score costs as much as the dot
       products; this one vectorises. */
    static inline f32x16 exp16(f32x16 x) {
        const f32x16 lo = (f32x16){0} - 87.33654f, hi = (f32x16){0} + 88.0f;
        i32x16 live = x >= lo;
        x = max16(x, lo);
        x = sel16(x > hi, hi, x);
        f32x16 n = x * 1.44269504f + 12582912.f;   /* round to nearest via 1.5 * 2^23 */
        n -= 12582912.f;
        f32x16 f = x - n * 0.693359375f;
        f -= n * -2.12194440e-4f;
        f32x16 p = f * (1.f / 5040) + (1.f / 720);
        p = p * f + (1.f / 120);
        p = p * f + (1.f / 24);
        p = p * f + (1.f / 6);
        p = p * f + 0.5f;
        p = p * f + 1.f;
        p = p * f + 1.f;
        i32x16 e = (__builtin_convertvector(n, i32x16) + 127) << 23;
        return (f32x16)((i32x16)(p * (f32x16)e) & live);
    }

    /* bfloat16 weights are stored as their bit patterns (uint16), the high half of a float32:
       widening is exact, a zero-extend and a shift (vpmovzxwd + vpslld). */
    #if defined(__AVX512F__)
    #include <immintrin.h>   /* one vpmovzxwd zmm: GCC splits the generic conversion in two halves */
    static inline f32x16 ldbf16(const unsigned short *p) {
        return (f32x16)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
    }
    #else
    typedef unsigned short u16x16 __attribute__((vector_size(32)));
    static inline f32x16 ldbf16(const unsigned short *p) {
        u16x16 h; memcpy(&h, p, 32);
        return (f32x16)(__builtin_convertvector(h, i32x16) << 16);
    }
    #endif
    static inline float bf16f(unsigned short b) {
        unsigned int u = (unsigned int)b << 16; float f; memcpy(&f, &u, 4); return f;
    }
    /* dst[i] = bf16 bits src[i] widened to float32, i < n. */
    static inline void widen_bf16(const unsigned short *src, float *dst, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) st16(dst + i, ldbf16(src + i));
        for (; i < n; i++) dst[i] = bf16f(src[i]);
    }

    /* sum_i x[i]^2: 16 float lanes of partial sums (each over n/16 terms), added in double. */
    static inline double sumsq_f32(const float *x, Py_ssize_t n) {
        f32x16 a = {0};
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) { f32x16 v = ld16(x + i); a += v * v; }
        double s = 0.0;
        for (int j = 0; j < 16; j++) s += a[j];
        for (; i < n; i++) s += (double)x[i] * x[i];
        return s;
    }

    /* g <- g / (1 + e^-g) * u over n floats (SiLU(gate) * up). */
    static inline void silu_mul_f32(float *g, const float *u, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            f32x16 x = ld16(g + i);
            st16(g + i, x / (1.f + exp16(-x)) * ld16(u + i));
        }
        for (; i < n; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
    }
    """
    ctypedef float f32x16 "f32x16"
    void widen_bf16(const unsigned short *src, float *dst, Py_ssize_t n)
    void silu_mul_f32(float *g, const float *u, Py_ssize_t n)
    double sumsq_f32(const float *x, Py_ssize_t n)
