"""Linear layers and the SwiGLU MLP with bfloat16 weights, computed in float32.

Weights are uint16 arrays of bf16 bit patterns (pipeline.weights.BF16), usually read-only memmaps
of the export; they are widened on the fly (bits << 16 is the float32 of the same value, exactly)
and never copied whole into float32:
- few tokens (T <= SMALL_T = 16, decode): our own SIMD GEMV, one sequential prefetched stream
  per thread. It is memory bound and reads half the bytes of a float32 GEMV, so it is up to twice
  as fast. Work items are fixed by the shapes (row blocks; for x @ w_t, row chunks whose partial
  sums are added in chunk order), so results do not depend on num_threads, bit for bit.
- more tokens (prefill): blocks of weight rows are widened into a float32 scratch block of
  O(block) size and multiplied by BLAS (numpy.matmul with out=, OpenBLAS's threads, one pass of x
  per block), so the GEMM runs near the float32 BLAS rate plus a widening pass.
Parallel regions: every region costs a thread wake-up under OMP_WAIT_POLICY=PASSIVE (15-100 us
measured on this 2-vCPU VM), so each kernel is one region with no barriers inside, and the MLP
for few tokens is one region for all three products.
"""

import threading

import numpy as np

from cython.parallel cimport parallel, prange

from ext.mlp import MLPWorkspace, silu_mul
from ext.simd cimport silu_mul_f32, widen_bf16

cdef extern from * nogil:
    """
    /* Software prefetch distance, in bf16 elements (16 KiB) ahead of the read position. One
       sequential stream per thread plus this prefetch measured 47 GB/s of bf16 on one core;
       several interleaved row streams (a rows x tokens register tile) without it, 15 GB/s. */
    #define PF_AHEAD 8192

    /* Hand-offs between the loops of one parallel region without a barrier: under
       OMP_WAIT_POLICY=PASSIVE every barrier puts the early threads to sleep, and waking them cost
       15-100 us per barrier on this VM (a whole 2 MiB GEMV takes 50). Instead, the thread that
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

    /* out[t*ldo] = sum_k x[t*ldx + k] * w[k] for t < TT: one weight row streamed once, U vectors
       per step and token (U * TT <= 8 independent accumulators); TT, U constants at each call. */
    static inline __attribute__((always_inline)) void gemv_row(
            const float *x, Py_ssize_t ldx, const unsigned short *w, Py_ssize_t K,
            float *out, Py_ssize_t ldo, const int TT, const int U) {
        f32x16 acc[8];
        for (int i = 0; i < U * TT; i++) acc[i] = (f32x16){0};
        Py_ssize_t k = 0;
        for (; k + 16 * U <= K; k += 16 * U) {
            for (int u = 0; u < U; u += 2) __builtin_prefetch(w + k + 16 * u + PF_AHEAD);
            for (int u = 0; u < U; u++) {
                f32x16 wv = ldbf16(w + k + 16 * u);
                for (int t = 0; t < TT; t++) acc[t * U + u] += ld16(x + t * ldx + k + 16 * u) * wv;
            }
        }
        for (; k + 16 <= K; k += 16) {
            f32x16 wv = ldbf16(w + k);
            for (int t = 0; t < TT; t++) acc[t * U] += ld16(x + t * ldx + k) * wv;
        }
        for (int t = 0; t < TT; t++) {
            f32x16 a = acc[t * U];
            for (int u = 1; u < U; u++) a += acc[t * U + u];
            float s = hsum16(a);
            for (Py_ssize_t kk = k; kk < K; kk++) s += x[t * ldx + kk] * bf16f(w[kk]);
            out[t * ldo] = s;
        }
    }

    #define GEMV_ROWS(TT, U) \
        for (Py_ssize_t n = n0; n < n1; n++) gemv_row(x, ldx, w + n * K, K, out + n, ldo, TT, U);

    /* out[t*ldo + n] = sum_k x[t*ldx + k] w[n*K + k] for n0 <= n < n1, t < T: groups of up to 8
       tokens, each group one pass over the rows (from L2 after the first: a block is 128 KiB). */
    static void gemv_rows(const float *x, int T, Py_ssize_t ldx, const unsigned short *w,
                          Py_ssize_t K, Py_ssize_t n0, Py_ssize_t n1, float *out, Py_ssize_t ldo) {
        for (int t0 = 0; t0 < T; t0 += 8, x += 8 * ldx, out += 8 * ldo) {
            switch (T - t0 < 8 ? T - t0 : 8) {
                case 1: GEMV_ROWS(1, 4) break;
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

    /* o[c] += a * w[c] for c < N: one weight row (streamed, prefetched) into one output row. */
    static inline void axpy_bf16(float a, const unsigned short *w, Py_ssize_t N, float *o) {
        Py_ssize_t c = 0;
        for (; c + 32 <= N; c += 32) {
            __builtin_prefetch(w + c + PF_AHEAD);
            st16(o + c, ld16(o + c) + ldbf16(w + c) * a);
            st16(o + c + 16, ld16(o + c + 16) + ldbf16(w + c + 16) * a);
        }
        for (; c + 16 <= N; c += 16) st16(o + c, ld16(o + c) + ldbf16(w + c) * a);
        for (; c < N; c++) o[c] += bf16f(w[c]) * a;
    }

    /* p[t*N + c] = sum_{k0 <= k < k1} x[t*ldx + k] w[k*N + c] for t < T, c < N; w (K, N). */
    static void gemvt_rows(const float *x, int T, Py_ssize_t ldx, const unsigned short *w,
                           Py_ssize_t N, Py_ssize_t k0, Py_ssize_t k1, float *p) {
        memset(p, 0, (size_t)T * N * sizeof(float));
        for (Py_ssize_t k = k0; k < k1; k++)
            for (int t = 0; t < T; t++) axpy_bf16(x[t * ldx + k], w + k * N, N, p + (Py_ssize_t)t * N);
    }

    /* out[i] = sum over chunks ch, in order, of parts[ch*n + i], i < n. */
    static void reduce_parts(const float *parts, Py_ssize_t nchunks, Py_ssize_t n, float *out) {
        memcpy(out, parts, n * sizeof(float));
        for (Py_ssize_t ch = 1; ch < nchunks; ch++) {
            const float *p = parts + ch * n;
            Py_ssize_t i = 0;
            for (; i + 16 <= n; i += 16) st16(out + i, ld16(out + i) + ld16(p + i));
            for (; i < n; i++) out[i] += p[i];
        }
    }
    """
    void reduce_parts(const float *parts, Py_ssize_t nchunks, Py_ssize_t n, float *out)
    bint last_done(int *counter, int total)
    void set_flag(int *flag)
    void wait_flag(int *flag)
    void gemv_rows(const float *x, int T, Py_ssize_t ldx, const unsigned short *w, Py_ssize_t K,
                   Py_ssize_t n0, Py_ssize_t n1, float *out, Py_ssize_t ldo)
    void gemvt_rows(const float *x, int T, Py_ssize_t ldx, const unsigned short *w, Py_ssize_t N,
                    Py_ssize_t k0, Py_ssize_t k1, float *p)

cdef enum:
    SMALL_T = 16       # up to this many tokens: SIMD GEMV; more: widened blocks through BLAS
    ROW_BLOCK = 64     # weight rows per parallel work item of the GEMV (out = x @ w.T)
    K_CHUNK = 128      # weight rows per partial sum of the transposed GEMV (out = x @ w_t)

# BLAS path (T > SMALL_T): float32 elements of one widened scratch block (2 MiB). BLAS packs its
# operands again for every block, so blocks must be big enough for that to be cheap: at T=128 and
# the 0.6B shapes, 128K-element blocks ran at 70-90% of numpy's float32 GEMM, 512K at 95-100%.
_block_elems = 1 << 19

_local = threading.local()  # per-thread scratch for the BLAS path (numpy releases the GIL in matmul)


def _scratch(Py_ssize_t n, name="buf"):
    """A float32 buffer of at least n elements, reused by this Python thread."""
    buf = getattr(_local, name, None)
    if buf is None or buf.shape[0] < n:
        buf = np.empty(n, np.float32)
        setattr(_local, name, buf)
    return buf


cdef void _gemv(const float[:, ::1] x, const unsigned short[:, ::1] w, float[:, ::1] out,
                Py_ssize_t ldo, int n) noexcept nogil:
    """out[t, n] = sum_k x[t, k] w[n, k] for all rows n of w, t < T (row stride ldo)."""
    cdef Py_ssize_t N = w.shape[0], K = w.shape[1], b, n0, n1
    cdef Py_ssize_t nblocks = (N + ROW_BLOCK - 1) // ROW_BLOCK
    if nblocks < 2:
        n = 1
    with nogil, parallel(num_threads=n):
        for b in prange(nblocks, schedule="dynamic"):
            n0 = b * ROW_BLOCK
            n1 = n0 + ROW_BLOCK if n0 + ROW_BLOCK < N else N
            gemv_rows(&x[0, 0], <int>x.shape[0], K, &w[0, 0], K, n0, n1, &out[0, 0], ldo)


cdef inline Py_ssize_t _nchunks(Py_ssize_t K) noexcept nogil:
    """Row chunks of a transposed weight with K rows: set by K alone, never by the thread count."""
    return K // K_CHUNK if K >= 2 * K_CHUNK else 1


cdef void _gemvt(const float[:, ::1] x, const unsigned short[:, ::1] w_t, float[:, ::1] out,
                 float *parts, int n) noexcept nogil:
    """out[t, c] = sum_k x[t, k] w_t[k, c]: rows of w_t cut into _nchunks(K) chunks, one partial
    sum per chunk (each thread streams whole rows of its chunks), the partials added in order.

    parts: room for _nchunks(K) * T * N floats (unused when there is one chunk).
    """
    cdef Py_ssize_t T = x.shape[0], K = w_t.shape[0], N = w_t.shape[1], ch
    cdef Py_ssize_t nchunks = _nchunks(K)
    cdef int done = 0
    if nchunks == 1:
        parts = &out[0, 0]
        n = 1
    with nogil, parallel(num_threads=n):
        for ch in prange(nchunks, schedule="dynamic"):
            gemvt_rows(&x[0, 0], <int>T, K, &w_t[0, 0], N, K * ch // nchunks,
                       K * (ch + 1) // nchunks, parts + ch * T * N)
            if nchunks > 1 and last_done(&done, <int>nchunks):
                reduce_parts(parts, nchunks, T * N, &out[0, 0])


cdef void _mlp_small(const float[:, ::1] x, const unsigned short[:, ::1] wg,
                     const unsigned short[:, ::1] wu, const unsigned short[:, ::1] wd,
                     float[:, ::1] gate, float[:, ::1] up, float[:, ::1] out, float *parts,
                     int n) noexcept nogil:
    """The MLP for T <= SMALL_T in one parallel region (one thread wake-up instead of four):
    gate, up = x @ wg.T, x @ wu.T; gate = silu(gate) * up; out = gate @ wd. gate, up (T, I);
    parts: room for _nchunks(I) * T * d floats."""
    cdef Py_ssize_t T = x.shape[0], d = x.shape[1], I = wg.shape[0], b, n0, n1, ch
    cdef Py_ssize_t nb = (I + ROW_BLOCK - 1) // ROW_BLOCK
    cdef Py_ssize_t nchunks = _nchunks(I)
    cdef int gate_up_done = 0, act_ready = 0, down_done = 0
    if nchunks == 1:
        parts = &out[0, 0]
    with nogil, parallel(num_threads=n):
        for b in prange(2 * nb, schedule="dynamic"):   # gate's row blocks, then up's
            n0 = (b % nb) * ROW_BLOCK
            n1 = n0 + ROW_BLOCK if n0 + ROW_BLOCK < I else I
            if b < nb:
                gemv_rows(&x[0, 0], <int>T, d, &wg[0, 0], d, n0, n1, &gate[0, 0], I)
            else:
                gemv_rows(&x[0, 0], <int>T, d, &wu[0, 0], d, n0, n1, &up[0, 0], I)
            if last_done(&gate_up_done, <int>(2 * nb)):
                silu_mul_f32(&gate[0, 0], &up[0, 0], T * I)   # T * I floats: microseconds
                set_flag(&act_ready)
        wait_flag(&act_ready)
        for ch in prange(nchunks, schedule="dynamic"):
            gemvt_rows(&gate[0, 0], <int>T, I, &wd[0, 0], d, I * ch // nchunks,
                       I * (ch + 1) // nchunks, parts + ch * T * d)
            if nchunks > 1 and last_done(&down_done, <int>nchunks):
                reduce_parts(parts, nchunks, T * d, &out[0, 0])


cdef void _widen_rows(const unsigned short[:, ::1] w, Py_ssize_t r0, Py_ssize_t r1,
                      float *dst) noexcept nogil:
    """dst (r1-r0, K) = float32(w[r0:r1])."""
    widen_bf16(&w[r0, 0], dst, (r1 - r0) * w.shape[1])


def _check(name, a, dtype, shape):
    if a.dtype != dtype or not a.flags.c_contiguous or a.shape != shape:
        raise ValueError(f"{name} must be C-contiguous {np.dtype(dtype).name} of shape {shape}, "
                         f"got {a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' (not contiguous)'}")


def _check_linear(fn, x, w, out, num_threads, transposed):
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"{fn}: x and w must be 2-D, got {x.shape}, {w.shape}")
    T, K = x.shape
    N = w.shape[1] if transposed else w.shape[0]
    _check(f"{fn}: x", x, np.float32, (T, K))
    _check(f"{fn}: w_t" if transposed else f"{fn}: w", w, np.uint16, (K, N) if transposed else (N, K))
    _check(f"{fn}: out", out, np.float32, (T, N))
    if num_threads < 1:
        raise ValueError(f"{fn}: num_threads must be >= 1, got {num_threads}")
    return T, K, N


def linear_bf16(x, w, out, int num_threads=1):
    """out = x @ w.T: x (T, K) float32, w (N, K) bf16 bits (uint16), out (T, N) float32.

    T <= SMALL_T: SIMD GEMV over row blocks of w (num_threads OpenMP threads); larger T: row
    blocks of w widened into scratch and multiplied by BLAS (its own threads, see set_threads).
    """
    cdef Py_ssize_t T, K, N, n0, nb, m
    T, K, N = _check_linear("linear_bf16", x, w, out, num_threads, False)
    if T == 0 or N == 0:
        return
    if K == 0:
        out[...] = 0
        return
    cdef const float[:, ::1] xv = x
    cdef const unsigned short[:, ::1] wv = w
    cdef float[:, ::1] ov = out
    if T <= SMALL_T:
        with nogil:
            _gemv(xv, wv, ov, N, num_threads)
        return
    nb = max(16, _block_elems // K)
    buf = _scratch(nb * K)
    cdef float[::1] bv = buf
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        with nogil:
            _widen_rows(wv, n0, n0 + m, &bv[0])
        np.matmul(x, buf[: m * K].reshape(m, K).T, out=out[:, n0:n0 + m])


def linear_t_bf16(x, w_t, out, int num_threads=1):
    """out = x @ w_t: x (T, K) float32, w_t (K, N) bf16 bits (uint16), out (T, N) float32.

    For the transposed (row-sharded) weights, o_proj and down_proj. T <= SMALL_T: SIMD GEMV over
    fixed chunks of rows of w_t (partial sums added in order, so any num_threads gives the same
    bits); larger T: row blocks of w_t widened into scratch, out += x[:, block] @ block by BLAS.
    """
    cdef Py_ssize_t T, K, N, k0, nb, m
    T, K, N = _check_linear("linear_t_bf16", x, w_t, out, num_threads, True)
    if T == 0 or N == 0:
        return
    if K == 0:
        out[...] = 0
        return
    cdef const float[:, ::1] xv = x
    cdef const unsigned short[:, ::1] wv = w_t
    cdef float[:, ::1] ov = out
    cdef float[::1] pv
    if T <= SMALL_T:
        pv = _scratch(_nchunks(K) * T * N, "parts")   # reused: no allocation, no page faults
        with nogil:
            _gemvt(xv, wv, ov, &pv[0], num_threads)
        return
    nb = max(16, _block_elems // N)
    buf = _scratch(nb * N)
    tmp = _scratch(T * N, "tmp")[: T * N].reshape(T, N)   # (T, N) one block's product
    cdef float[::1] bv = buf
    for k0 in range(0, K, nb):   # row blocks of w_t: contiguous reads, x packed once overall
        m = min(nb, K - k0)
        with nogil:
            _widen_rows(wv, k0, k0 + m, &bv[0])
        blk = buf[: m * N].reshape(m, N)
        if k0 == 0:
            np.matmul(x[:, :m], blk, out=out)
        else:
            np.matmul(x[:, k0:k0 + m], blk, out=tmp)
            np.add(out, tmp, out=out)


def mlp_bf16(x, w_gate, w_up, w_down_t, out, ws, int num_threads=1):
    """out = (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down_t with bf16 weights (uint16 bits).

    Same contract as ext.mlp.mlp: x, out (T, d) float32; w_gate, w_up, w_down_t (I_r, d) bf16;
    ws an ext.mlp.MLPWorkspace with I_r columns (grown once if max_T < T).
    """
    if x.ndim != 2 or w_gate.ndim != 2:
        raise ValueError(f"mlp_bf16: x and w_gate must be 2-D, got {x.shape}, {w_gate.shape}")
    T, d = x.shape
    I_r = w_gate.shape[0]
    _check("mlp_bf16: x", x, np.float32, (T, d))
    _check("mlp_bf16: w_gate", w_gate, np.uint16, (I_r, d))
    _check("mlp_bf16: w_up", w_up, np.uint16, (I_r, d))
    _check("mlp_bf16: w_down_t", w_down_t, np.uint16, (I_r, d))
    _check("mlp_bf16: out", out, np.float32, (T, d))
    if ws.I_r != I_r:
        raise ValueError(f"MLPWorkspace is for I_r={ws.I_r}, weights have I_r={I_r}")
    ws.reserve(T)
    gate = ws.gate[:T]   # (T, I_r)
    up = ws.up[:T]       # (T, I_r)
    if T > SMALL_T or I_r == 0 or d == 0:
        linear_bf16(x, w_gate, gate, num_threads)
        linear_bf16(x, w_up, up, num_threads)
        silu_mul(gate, up, num_threads)
        linear_t_bf16(gate, w_down_t, out, num_threads)
        return
    if num_threads < 1:
        raise ValueError(f"mlp_bf16: num_threads must be >= 1, got {num_threads}")
    cdef const float[:, ::1] xv = x
    cdef const unsigned short[:, ::1] wg = w_gate, wu = w_up, wd = w_down_t
    cdef float[:, ::1] gv = gate, uv = up, ov = out
    cdef float[::1] pv = _scratch(_nchunks(I_r) * T * d, "parts")
    if T:
        with nogil:
            _mlp_small(xv, wg, wu, wd, gv, uv, ov, &pv[0], num_threads)
