# Vector helpers shared by the kernels, as C (GCC/Clang vector extensions) of the machine's native
# width: VL = 16 float lanes (one AVX-512 register), 8 (AVX2) or 4 (SSE, NEON). A vector wider
# than the machine's registers would compile, but GCC keeps such values in memory and runs every
# operation through the stack (attention ran at a tenth of its speed: docs/design-notes.md#vector-width).
# Cython cannot express register tiles, and without -ffast-math GCC neither vectorises float
# reductions nor calls a vector expf, so these are written out.
# Cimporting anything from here pastes the C below into the cimporting module.

cdef extern from * nogil:
    """
    #include <math.h>
    #include <string.h>
    #pragma GCC diagnostic ignored "-Wpsabi"   /* static helpers only: no ABI crosses a call */
    #if defined(__AVX512F__)
    #define VL 16
    #elif defined(__AVX__)
    #define VL 8
    #else
    #define VL 4   /* SSE, NEON */
    #endif
    typedef float vf __attribute__((vector_size(VL * 4)));
    typedef int vi __attribute__((vector_size(VL * 4)));
    static inline vf vld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
    static inline void vst(float *p, vf v) { memcpy(p, &v, sizeof v); }
    /* Keep v in a register: GCC otherwise re-reads a reused operand from memory for every FMA
       (as a memory operand), which makes register tiles load-bound. */
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #define IN_REG(v) __asm__("" : "+v"(v))
    #else
    #define IN_REG(v) ((void)0)
    #endif
    /* Hint the cache to fetch n floats at p. Rows of one KV head are Hkv*D floats apart, each
       in its own 4 KiB page, where the hardware stream prefetchers stop: decode must ask. */
    static inline void prefetch_floats(const float *p, int n) {
        for (int i = 0; i < n; i += 16) __builtin_prefetch(p + i);
    }
    /* The same into L2 only (locality 2): decode attention's whole K/V rows, a few keys ahead. */
    static inline void prefetch_floats_l2(const float *p, int n) {
        for (int i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 2);
    }
    /* Sum of the VL lanes by halving (log2 VL shuffle + add steps, not VL - 1 dependent scalar
       adds): decode attention takes one per query head and key. */
    typedef float f32x4 __attribute__((vector_size(16)));
    static inline float hsum4(f32x4 b) { return (b[0] + b[2]) + (b[1] + b[3]); }
    #if VL >= 8
    typedef float f32x8 __attribute__((vector_size(32)));
    static inline float hsum8(f32x8 a) {
        return hsum4(__builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7));
    }
    #endif
    static inline float hsumv(vf v) {
    #if VL == 16
        return hsum8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
                     + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
    #elif VL == 8
        return hsum8(v);
    #else
        return hsum4(v);
    #endif
    }

    static inline vi vldi(const int *p) { vi v; memcpy(&v, p, sizeof v); return v; }
    static inline vf selv(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
    static inline vf maxv(vf a, vf b) { return selv(a > b, a, b); }

    /* e^x for VL lanes, ~1 ulp on [-87.3, 88] and 0 below: x = n ln2 + f, |f| <= ln2/2,
       e^x = 2^n (degree-7 Taylor of e^f). A scalar expf per score costs as much as the dot
       products; this one vectorises. */
    static inline vf expv(vf x) {
        const vf lo = (vf){0} - 87.33654f, hi = (vf){0} + 88.0f;
        vi live = x >= lo;
        x = maxv(x, lo);
        x = selv(x > hi, hi, x);
        vf n = x * 1.44269504f + 12582912.f;   /* round to nearest via 1.5 * 2^23 */
        n -= 12582912.f;
        vf f = x - n * 0.693359375f;
        f -= n * -2.12194440e-4f;
        vf p = f * (1.f / 5040) + (1.f / 720);
        p = p * f + (1.f / 120);
        p = p * f + (1.f / 24);
        p = p * f + (1.f / 6);
        p = p * f + 0.5f;
        p = p * f + 1.f;
        p = p * f + 1.f;
        vi e = (__builtin_convertvector(n, vi) + 127) << 23;
        return (vf)((vi)(p * (vf)e) & live);
    }

    /* bfloat16 weights are stored as their bit patterns (uint16), the high half of a float32:
       widening is exact, a zero-extend and a shift (vpmovzxwd + vpslld). */
    #if defined(__AVX512F__)
    #include <immintrin.h>   /* one vpmovzxwd zmm: GCC splits the generic conversion in two halves */
    static inline vf ldbfv(const unsigned short *p) {
        return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
    }
    #else
    typedef unsigned short u16v __attribute__((vector_size(VL * 2)));
    static inline vf ldbfv(const unsigned short *p) {
        u16v h; memcpy(&h, p, sizeof h);
        return (vf)(__builtin_convertvector(h, vi) << 16);
    }
    #endif
    static inline float bf16f(unsigned short b) {
        unsigned int u = (unsigned int)b << 16; float f; memcpy(&f, &u, 4); return f;
    }
    /* f rounded to the nearest bf16 (ties to even), as model_export.dtypes.float32_to_bf16: the
       activations' rounding of every bf16 product, oneDNN's (ext/dnnl.pyx) and our GEMV's
       (ext/gemv.pxd). Activations are finite; denormals are kept, where vcvtne2ps2bf16 and the
       bf16 units read them as zero (a difference below 2^-126). */
    static inline unsigned short bf16_bits(float f) {
        unsigned int u;
        memcpy(&u, &f, 4);
        return (unsigned short)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
    /* dst[i] = bf16 bits src[i] widened to float32, i < n. */
    static inline void widen_bf16(const unsigned short *src, float *dst, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + VL <= n; i += VL) vst(dst + i, ldbfv(src + i));
        for (; i < n; i++) dst[i] = bf16f(src[i]);
    }

    /* sum_i x[i]^2: VL float lanes of partial sums (each over n/VL terms), added in double. */
    static inline double sumsq_f32(const float *x, Py_ssize_t n) {
        vf a = {0};
        Py_ssize_t i = 0;
        for (; i + VL <= n; i += VL) { vf v = vld(x + i); a += v * v; }
        double s = 0.0;
        for (int j = 0; j < VL; j++) s += a[j];
        for (; i < n; i++) s += (double)x[i] * x[i];
        return s;
    }

    /* g <- g / (1 + e^-g) * u over n floats (SiLU(gate) * up). */
    static inline void silu_mul_f32(float *g, const float *u, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + VL <= n; i += VL) {
            vf x = vld(g + i);
            vst(g + i, x / (1.f + expv(-x)) * vld(u + i));
        }
        for (; i < n; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
    }
    """
    ctypedef float vf "vf"
    enum: VL
    void widen_bf16(const unsigned short *src, float *dst, Py_ssize_t n)
    unsigned short bf16_bits(float f)
    void silu_mul_f32(float *g, const float *u, Py_ssize_t n)
    double sumsq_f32(const float *x, Py_ssize_t n)
