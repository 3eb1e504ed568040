"""Linear layers, out = x @ w.T or x @ w_t, with float32 or bfloat16 weights, computed in float32.

Weights are float32 arrays or uint16 arrays of bf16 bit patterns (model_export.reader.BF16), usually
read-only memmaps of the export, never copied whole:
- few tokens (T <= SMALL_T = 16: decode): our SIMD GEMV (ext/gemv.pxd) in one OpenMP region per
  call, for both types; `linear_many` runs several products of the same input (q, k, v) in one
  region. A decode step is then a handful of regions per layer, and no BLAS thread pool takes
  turns with the OpenMP one (see ext/__init__.py for why that matters).
- more tokens (prefill): BLAS's sgemm, called single-threaded from our OpenMP threads, one
  block of GEMM_COLS output columns per work item (bf16 blocks widened first into a per-thread
  float32 scratch of O(block) size): one OpenMP pool, no OpenBLAS pthreads spinning on our cores.
  The sgemm is numpy's own OpenBLAS (found through threadpoolctl); else numpy.matmul.
- oneDNN's matmul (ext/dnnl.pyx), where it loaded and its implementation is not `ref`: the
  prefill products of every dtype (bf16 on the bf16 units, float32 at the CPU's GEMM peak rather
  than the OpenBLAS core the environment may force) and the int8 products of 2 tokens or more
  (int8 weights with a float32 scale per output channel, activations quantized per token).
  Without it, those int8 weights are dequantized O(block) at a time into float32 scratch and run
  the paths above. One token of int8 (decode) runs our int8 GEMV (ext/qgemv.h, VNNI or plain C).
"""

import ctypes
import os
import threading

import numpy as np

cimport numpy as cnp
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int8_t, int32_t, int64_t

from ext.gemv cimport (ROW_BLOCK, SMALL_T, bf16_units, gemv_rows, gemvt_rows, last_done, nchunks_of,
                       reduce_parts)
from ext.qgemv cimport Q8_GENERIC, Q8_VNNI, q8_cols, q8_cpu_vnni, q8_quantize, q8_reduce, q8_rows
from ext.simd cimport widen_bf16

from ext import dnnl
from ext.routing import BF16, F32, INT8, ONEDNN_MIN_T, ONEDNN_PACKED, packs  # noqa: F401 (ext.mlp, tests)
from ext.routing import onednn as _onednn

cnp.import_array()

cdef enum:
    MAX_MANY = 4   # products per linear_many call (q, k, v)
    GEMM_COLS = 512   # output columns per GEMM work item: fixed, so results do not depend on threads
    CBLAS_ROW_MAJOR = 101
    CBLAS_NO_TRANS = 111
    CBLAS_TRANS = 112

# cblas_sgemm of an ILP64 OpenBLAS (64-bit integer arguments), as numpy's wheels ship it, and
# OpenBLAS's get/set of its own thread count.
ctypedef void (*sgemm_fn)(int order, int transa, int transb, int64_t M, int64_t N, int64_t K,
                          float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                          float beta, float *C, int64_t ldc) noexcept nogil
ctypedef int (*get_threads_fn)() noexcept nogil
ctypedef void (*set_threads_fn)(int) noexcept nogil
cdef sgemm_fn _sgemm = NULL
cdef get_threads_fn _blas_get_threads = NULL
cdef set_threads_fn _blas_set_threads = NULL
# (sgemm, get threads, set threads) in numpy >= 2 wheels (scipy-openblas64) and openblas64_ builds
BLAS_SYMBOLS = (("scipy_cblas_sgemm64_", "scipy_openblas_get_num_threads64_",
                 "scipy_openblas_set_num_threads64_"),
                ("cblas_sgemm64_", "openblas_get_num_threads64_", "openblas_set_num_threads64_"))


cdef size_t _address(lib, name) except 0:
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


def _bind_sgemm():
    """Find cblas_sgemm in the OpenBLAS numpy loaded; returns where it came from, or None."""
    global _sgemm, _blas_get_threads, _blas_set_threads
    from threadpoolctl import threadpool_info
    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        lib = ctypes.CDLL(info["filepath"])   # already loaded by numpy: the same library
        for names in BLAS_SYMBOLS:
            if all(hasattr(lib, name) for name in names):
                _sgemm = <sgemm_fn>_address(lib, names[0])
                _blas_get_threads = <get_threads_fn>_address(lib, names[1])
                _blas_set_threads = <set_threads_fn>_address(lib, names[2])
                return f"{info['filepath']}:{names[0]}"
    return None


_sgemm_source = _bind_sgemm()


def sgemm_source():
    """Where the prefill GEMMs' sgemm was bound from ("library path:symbol"), or None when it was
    not found and numpy.matmul does them (recorded in every bench JSON)."""
    return _sgemm_source


def gemm_in_openmp():
    """True when prefill GEMMs run as single-threaded sgemm calls on our OpenMP threads. BLAS's
    own pool is best left at one thread then (pipeline.engine.threads.set_threads does); otherwise each
    call sets it to one and back, so the two pools never run at once."""
    return _sgemm != NULL


WEIGHT_DTYPES = (F32, BF16)   # our GEMV's and sgemm's
ALL_DTYPES = WEIGHT_DTYPES + (INT8,)           # int8 with a float32 scale per output channel

# BLAS path for bf16 (T > SMALL_T): float32 elements of one widened scratch block (2 MiB). BLAS
# packs its operands again for every block, so blocks must be big enough for that to be cheap:
# 512K elements come near numpy's own float32 GEMM, smaller blocks fall short
# (docs/design-notes.md#bf16-gemm-blocks).
_block_elems = 1 << 19

_local = threading.local()  # per-thread scratch (numpy releases the GIL in matmul)


def scratch(Py_ssize_t n, name="buf"):
    """A float32 buffer of at least n elements, reused by this Python thread."""
    buf = getattr(_local, name, None)
    if buf is None or buf.shape[0] < n:
        buf = np.empty(n, np.float32)
        setattr(_local, name, buf)
    return buf


cdef inline const void *data(a):
    return <const void *>cnp.PyArray_DATA(a)


cdef inline Py_ssize_t _row_blocks(int m, const Py_ssize_t *N, Py_ssize_t *start) noexcept nogil:
    """start[j] = the first row block of product j (blocks of ROW_BLOCK rows, all m products in
    turn); returns the count of blocks, the work items of one parallel region."""
    cdef int j
    start[0] = 0
    for j in range(m):
        start[j + 1] = start[j] + (N[j] + ROW_BLOCK - 1) // ROW_BLOCK
    return start[m]


cdef inline int _product_of(Py_ssize_t b, const Py_ssize_t *start) noexcept nogil:
    """The product whose row blocks include block b."""
    cdef int j = 0
    while b >= start[j + 1]:
        j = j + 1
    return j


cdef void _gemv_many(const float *x, int T, Py_ssize_t K, int m, const void **w,
                     const Py_ssize_t *N, float **out, int bf, int n) noexcept nogil:
    """out[j][t, r] = sum_k x[t, k] w[j][r, k] for the m products j, all rows r, t < T: the row
    blocks of all m weights are the work items of one parallel region."""
    cdef Py_ssize_t start[MAX_MANY + 1]
    cdef Py_ssize_t b, n0, n1
    cdef int j
    if _row_blocks(m, N, start) < 2:
        n = 1
    with nogil, parallel(num_threads=n):
        for b in prange(start[m], schedule="static"):
            j = _product_of(b, start)
            n0 = (b - start[j]) * ROW_BLOCK
            n1 = n0 + ROW_BLOCK if n0 + ROW_BLOCK < N[j] else N[j]
            gemv_rows(x, T, K, w[j], K, n0, n1, out[j], N[j], bf)


cdef void _gemvt(const float *x, int T, Py_ssize_t K, const void *w_t, Py_ssize_t N, float *out,
                 float *parts, int bf, int n) noexcept nogil:
    """out[t, c] = sum_k x[t, k] w_t[k, c]: rows of w_t cut into nchunks_of(K) chunks, one partial
    sum per chunk (each thread streams whole rows of its chunks), the partials added in order.

    parts: room for nchunks_of(K) * T * N floats (unused when there is one chunk).
    """
    cdef Py_ssize_t nchunks = nchunks_of(K), ch
    cdef int done = 0
    if nchunks == 1:
        parts = out
        n = 1
    with nogil, parallel(num_threads=n):
        for ch in prange(nchunks, schedule="static"):
            gemvt_rows(x, T, K, w_t, N, K * ch // nchunks, K * (ch + 1) // nchunks,
                       parts + ch * T * N, bf)
            if nchunks > 1 and last_done(&done, <int>nchunks):
                reduce_parts(parts, nchunks, T * N, out)


# The int8 GEMV (one token) that runs here: AVX-512 VNNI where the CPU has it, else plain C; the
# same bits either way (exact int32 sums). QWEN3_INT8_KERNEL=generic forces the plain one.
cdef int _q8_isa = Q8_VNNI if q8_cpu_vnni() and os.environ.get("QWEN3_INT8_KERNEL") != "generic" \
    else Q8_GENERIC
Q8_KERNELS = {Q8_GENERIC: "generic", Q8_VNNI: "avx512_vnni"}


cdef int q8_isa() noexcept nogil:
    return _q8_isa


cdef extern from "prefetch.h" nogil:
    long rows_prefetch_bytes(int kernel)
    enum:
        ROWS_PF_BF16
        ROWS_PF_INT8
        ROWS_PF_F32


def gemv_prefetch_bytes(dtype) -> int:
    """How far ahead (bytes) the one-token rows kernel of weights of `dtype` prefetches them (into
    L2): on Intel CPUs 16384 for int8 and 4096 for bf16, on AMD CPUs with AVX-512 4096 for float32
    (0 there: float32 reads eight rows at once), 0 elsewhere; or QWEN3_GEMV_PREFETCH for all three
    (ext/prefetch.h)."""
    if dtype == INT8:
        return rows_prefetch_bytes(ROWS_PF_INT8)
    return rows_prefetch_bytes(ROWS_PF_BF16 if dtype == BF16 else ROWS_PF_F32)


def int8_kernel() -> str:
    """Which int8 GEMV runs at one token: "avx512_vnni" or "generic"."""
    return Q8_KERNELS[_q8_isa]


def int8_kernels() -> list:
    """The int8 GEMVs this CPU can run: "generic", and "avx512_vnni" where it has VNNI."""
    return ["generic"] + (["avx512_vnni"] if q8_cpu_vnni() else [])


def set_int8_kernel(name) -> None:
    """Choose the int8 GEMV ("generic" runs anywhere; "avx512_vnni" needs the CPU's VNNI): tests."""
    global _q8_isa
    if name == "avx512_vnni" and not q8_cpu_vnni():
        raise ValueError("int8 kernel avx512_vnni: this CPU has no AVX-512 VNNI")
    if name not in Q8_KERNELS.values():
        raise ValueError(f"int8 kernel {name!r}: choose from {sorted(Q8_KERNELS.values())}")
    _q8_isa = Q8_VNNI if name == "avx512_vnni" else Q8_GENERIC


cdef void _q8_gemv_many(const int8_t *xq, float sx, Py_ssize_t K, int m, const void **w,
                        const float **scale, const Py_ssize_t *N, float **out, int isa,
                        int n) noexcept nogil:
    """out[j][r] = sx * scale[j][r] * sum_k xq[k] w[j][r, k] (int8 weights) for the m products,
    one token: _gemv_many's row blocks; on the calling thread alone when n == 1 (no region)."""
    cdef Py_ssize_t start[MAX_MANY + 1]
    cdef Py_ssize_t b, n0, n1
    cdef int j
    if n == 1 or _row_blocks(m, N, start) < 2:
        for j in range(m):
            q8_rows(xq, sx, <const int8_t *>w[j], K, 0, N[j], scale[j], out[j], isa)
        return
    with nogil, parallel(num_threads=n):
        for b in prange(start[m], schedule="static"):
            j = _product_of(b, start)
            n0 = (b - start[j]) * ROW_BLOCK
            n1 = n0 + ROW_BLOCK if n0 + ROW_BLOCK < N[j] else N[j]
            q8_rows(xq, sx, <const int8_t *>w[j], K, n0, n1, scale[j], out[j], isa)


cdef void _q8_gemvt(const int8_t *xq, float sx, Py_ssize_t K, const int8_t *w_t, Py_ssize_t N,
                    const float *scale, float *out, int32_t *parts, int isa, int n) noexcept nogil:
    """out[c] = sx * scale[c] * sum_k xq[k] w_t[k, c]: _gemvt's chunks of rows, int32 partial sums
    (parts: nchunks_of(K) * N), added exactly by the thread that finishes last."""
    cdef Py_ssize_t nchunks = nchunks_of(K), ch
    cdef int done = 0
    if n == 1 or nchunks == 1:
        for ch in range(nchunks):
            q8_cols(xq, w_t, N, K * ch // nchunks, K * (ch + 1) // nchunks, parts + ch * N, isa)
        q8_reduce(parts, nchunks, N, sx, scale, out)
        return
    with nogil, parallel(num_threads=n):
        for ch in prange(nchunks, schedule="static"):
            q8_cols(xq, w_t, N, K * ch // nchunks, K * (ch + 1) // nchunks, parts + ch * N, isa)
            if last_done(&done, <int>nchunks):
                q8_reduce(parts, nchunks, N, sx, scale, out)


def _q8_linear(x, q, scale, out, bint transposed, int num_threads):
    """out = x @ (q * scale) for one token on our int8 GEMV (arguments checked by the caller)."""
    cdef Py_ssize_t K = x.shape[1], N = out.shape[1]
    cdef float[::1] xs = scratch((K + 3) // 4, "q8_x")   # K int8 activations
    cdef float[::1] ps = scratch(nchunks_of(K) * N if transposed else 1, "q8_parts")   # int32
    cdef int8_t *xq = <int8_t *>&xs[0]
    cdef const float *xp = <const float *>data(x)
    cdef const void *wp = data(q)
    cdef const float *sp = <const float *>data(scale)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef float sx
    with nogil:
        sx = q8_quantize(xp, K, xq)
        if transposed:
            _q8_gemvt(xq, sx, K, <const int8_t *>wp, N, sp, op, <int32_t *>&ps[0], _q8_isa,
                      num_threads)
        else:
            _q8_gemv_many(xq, sx, K, 1, &wp, &sp, &N, &op, _q8_isa, num_threads)


cdef void _gemm(const float *x, Py_ssize_t T, Py_ssize_t K, const void *w, Py_ssize_t N,
                bint transposed, float *out, int bf, float *scratch, Py_ssize_t per_thread,
                int n) noexcept nogil:
    """out (T, N) = x (T, K) @ w.T for w (N, K), or x @ w for a transposed w (K, N); one block of
    GEMM_COLS output columns per work item, each a single-threaded sgemm. bf16 weights are widened
    into this thread's `per_thread` floats of scratch, K in chunks that fit, summed by BLAS
    (beta = 1 after the first chunk)."""
    cdef Py_ssize_t nitems = (N + GEMM_COLS - 1) // GEMM_COLS, b, c0, nc, k0, kc, kk, r
    cdef float *buf
    cdef const float *wf = <const float *>w
    cdef const unsigned short *wb = <const unsigned short *>w
    if nitems < 2:
        n = 1
    with nogil, parallel(num_threads=n):
        buf = scratch + threadid() * per_thread
        for b in prange(nitems, schedule="static"):
            c0 = b * GEMM_COLS
            nc = GEMM_COLS if c0 + GEMM_COLS <= N else N - c0
            if not bf and transposed:
                _sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, T, nc, K, 1.0, x, K,
                       wf + c0, N, 0.0, out + c0, N)
            elif not bf:
                _sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, T, nc, K, 1.0, x, K,
                       wf + c0 * K, K, 0.0, out + c0, N)
            else:
                kc = per_thread // GEMM_COLS
                k0 = 0
                while k0 < K:
                    kk = kc if k0 + kc <= K else K - k0
                    if transposed:   # rows k0.. of w_t, columns c0..: buf (kk, nc)
                        for r in range(kk):
                            widen_bf16(wb + (k0 + r) * N + c0, buf + r * nc, nc)
                        _sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, T, nc, kk, 1.0,
                               x + k0, K, buf, nc, 0.0 if k0 == 0 else 1.0, out + c0, N)
                    else:            # rows c0.. of w, columns k0..: buf (nc, kk)
                        for r in range(nc):
                            widen_bf16(wb + (c0 + r) * K + k0, buf + r * kk, kk)
                        _sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, T, nc, kk, 1.0,
                               x + k0, K, buf, kk, 0.0 if k0 == 0 else 1.0, out + c0, N)
                    k0 = k0 + kc


def _gemm_openmp(x, w, out, bint transposed, int num_threads):
    cdef Py_ssize_t T = x.shape[0], K = x.shape[1], N = out.shape[1]
    cdef Py_ssize_t per_thread = _block_elems
    cdef int bf = w.dtype == BF16
    cdef float[::1] sv = scratch(num_threads * per_thread if bf else 1, "gemm")
    cdef const float *xp = <const float *>data(x)
    cdef const void *wp = data(w)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef int blas_threads = _blas_get_threads()
    if blas_threads != 1:
        _blas_set_threads(1)
    try:
        with nogil:
            _gemm(xp, T, K, wp, N, transposed, op, bf, &sv[0], per_thread, num_threads)
    finally:
        if blas_threads != 1:
            _blas_set_threads(blas_threads)


def check_array(name, a, dtypes, shape):
    """a must be C-contiguous, of one of `dtypes`, of `shape`; a clear ValueError otherwise."""
    if a.dtype not in dtypes or not a.flags.c_contiguous or a.shape != shape:
        want = " or ".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"{name} must be C-contiguous {want} of shape {shape}, "
                         f"got {a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' (not contiguous)'}")


def _check_linear(fn, x, w, out, num_threads, transposed, scale=None):
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"{fn}: x and w must be 2-D, got {x.shape}, {w.shape}")
    T, K = x.shape
    N = w.shape[1] if transposed else w.shape[0]
    check_array(f"{fn}: x", x, (np.float32,), (T, K))
    check_array(f"{fn}: w_t" if transposed else f"{fn}: w", w, ALL_DTYPES,
                (K, N) if transposed else (N, K))
    check_array(f"{fn}: out", out, (np.float32,), (T, N))
    if w.dtype == INT8:
        if scale is None:
            raise ValueError(f"{fn}: int8 weights need scale, float32 ({N},) per output channel")
        check_array(f"{fn}: scale", scale, (np.float32,), (N,))
    elif scale is not None:
        raise ValueError(f"{fn}: scale is for int8 weights only, got {w.dtype} weights")
    if num_threads < 1:
        raise ValueError(f"{fn}: num_threads must be >= 1, got {num_threads}")
    return T, K, N


def implementation(w_dtype, Py_ssize_t T, Py_ssize_t K, Py_ssize_t N, bint transposed=False,
                   int num_threads=1, bint rows=False) -> str:
    """What computes x (T, K) @ W (K, N) with weights of w_dtype (rows: linear_t given rows=):
    "onednn:<its implementation name>" (":packed" on its packed copy), "gemv" (ours),
    "gemv-int8:<kernel>" (our int8 GEMV, one token), "gemv-bf16:avx512_bf16" (our bf16 GEMV on
    the bf16 units, one token), "sgemm" (BLAS's on our OpenMP threads), "numpy" (numpy.matmul),
    with "+dequant" for int8 weights widened to float32 first (for the bench JSON)."""
    dt = np.dtype(w_dtype)
    if dt not in ALL_DTYPES:
        raise ValueError(f"implementation: weights float32, uint16 (bf16) or int8, got {dt}")
    if T >= ONEDNN_MIN_T[dt]:
        transposed = transposed and not (rows and not packs(dt, False))   # linear_t's rows=
        packed = packs(dt, transposed)
        impl = dnnl.implementation(dt, T, K, N, transposed, num_threads, packed)
        if impl is not None:
            return f"onednn:{impl}" + (":packed" if packed else "")
    if dt == INT8 and T == 1:
        return f"gemv-int8:{Q8_KERNELS[_q8_isa]}"
    if dt == BF16 and T == 1 and bf16_units():   # activations rounded to bf16 (ext/gemv.pxd)
        return "gemv-bf16:avx512_bf16"
    base = "gemv" if T <= SMALL_T else ("sgemm" if _sgemm != NULL else "numpy")
    return base + ("+dequant" if dt == INT8 else "")


def linear(x, w, out, int num_threads=1, scale=None):
    """out = x @ w.T: x (T, K) float32, w (N, K) float32, bf16 bits (uint16) or int8 with scale
    (N,) float32 (w = q * scale[:, None]), out (T, N) float32.

    oneDNN where ONEDNN_MIN_T says; else T <= SMALL_T: SIMD GEMV over row blocks of w
    (num_threads OpenMP threads); larger T: BLAS's sgemm on those threads.
    """
    T, K, N = _check_linear("linear", x, w, out, num_threads, False, scale)
    if T == 0 or N == 0:
        return
    if K == 0:
        out[...] = 0
    elif _onednn(x, w, out, num_threads, False, scale):
        pass
    elif w.dtype == INT8 and T == 1:
        _q8_linear(x, w, scale, out, False, num_threads)
    elif w.dtype == INT8:
        _dequantized(x, w, scale, out, False, num_threads)
    elif T <= SMALL_T:   # straight to the GEMV: linear_many would route T >= ONEDNN_MIN_T back here
        _gemv_list(x, (w,), (out,), num_threads)
    elif _sgemm != NULL:
        _gemm_openmp(x, w, out, False, num_threads)
    elif w.dtype == BF16:
        _linear_bf16_blas(x, w, out)
    else:
        np.matmul(x, w.T, out=out)


def linear_many(x, ws, outs, int num_threads=1, scales=None):
    """outs[j] = x @ ws[j].T for up to MAX_MANY weights of one dtype with x's K columns (q, k, v);
    int8 weights come with scales[j], (N_j,) float32 each.

    T <= SMALL_T on our GEMV: one parallel region for all of them (one thread wake-up instead of
    len(ws)); otherwise one linear() each.
    """
    cdef int j, m = len(ws)
    cdef Py_ssize_t T, K
    if m != len(outs) or not 1 <= m <= MAX_MANY:
        raise ValueError(f"linear_many: 1 to {MAX_MANY} weights, one output each (got {m}, {len(outs)})")
    if scales is not None and len(scales) != m:
        raise ValueError(f"linear_many: one scale per weight (got {len(scales)} for {m})")
    for j in range(m):
        _check_linear("linear_many", x, ws[j], outs[j], num_threads, False,
                      None if scales is None else scales[j])
        if ws[j].dtype != ws[0].dtype:
            raise ValueError(f"linear_many: weights of one dtype, got {ws[0].dtype} and {ws[j].dtype}")
    T, K = x.shape[0], x.shape[1]
    if T > SMALL_T or K == 0 or T >= ONEDNN_MIN_T[ws[0].dtype] or ws[0].dtype == INT8:
        for j in range(m):
            linear(x, ws[j], outs[j], num_threads, None if scales is None else scales[j])
        return
    if T:
        _gemv_list(x, ws, outs, num_threads)


cdef _gemv_list(x, ws, outs, int num_threads):
    """outs[j] = x @ ws[j].T on our GEMV, one parallel region; arguments already checked."""
    cdef const void *wp[MAX_MANY]
    cdef float *op[MAX_MANY]
    cdef Py_ssize_t Ns[MAX_MANY]
    cdef int j, m = len(ws), bf = ws[0].dtype == BF16
    cdef Py_ssize_t T = x.shape[0], K = x.shape[1]
    cdef const float *xp = <const float *>data(x)
    for j in range(m):
        wp[j] = data(ws[j])
        op[j] = <float *>cnp.PyArray_DATA(outs[j])
        Ns[j] = ws[j].shape[0]
    with nogil:
        _gemv_many(xp, <int>T, K, m, wp, Ns, op, bf, num_threads)


def linear_t(x, w_t, out, int num_threads=1, scale=None, rows=None):
    """out = x @ w_t: x (T, K) float32, w_t (K, N) float32, bf16 bits (uint16) or int8 with scale
    (N,) float32 (w_t = q * scale[None, :]), out (T, N) float32. rows: the caller's copy of the
    same weights as rows, w_t.T (N, K) C-contiguous, if it holds one (ext.decode's).

    For the transposed (row-sharded) weights, o_proj and down_proj. oneDNN where ONEDNN_MIN_T
    says (on rows, where packs() keeps (N, K) weights in place); else T <= SMALL_T: SIMD GEMV over
    fixed chunks of rows of w_t (partial sums added in order, so any num_threads gives the same
    bits); larger T: BLAS (bf16: row blocks of w_t widened into scratch, out += x[:, block] @ block).
    """
    cdef float[::1] pv
    cdef const float *xp
    cdef const void *wp
    cdef float *outp
    cdef int bf
    cdef Py_ssize_t T, K, N
    T, K, N = _check_linear("linear_t", x, w_t, out, num_threads, True, scale)
    if rows is not None:
        check_array("linear_t: rows", rows, (w_t.dtype,), (N, K))
    if T == 0 or N == 0:
        return
    if K == 0:
        out[...] = 0
    elif rows is not None and not packs(w_t.dtype, False) and _onednn(x, rows, out, num_threads,
                                                                       False, scale):
        pass
    elif _onednn(x, w_t, out, num_threads, True, scale):
        pass
    elif w_t.dtype == INT8 and T == 1:
        _q8_linear(x, w_t, scale, out, True, num_threads)
    elif w_t.dtype == INT8:
        _dequantized(x, w_t, scale, out, True, num_threads)
    elif T <= SMALL_T:
        pv = scratch(nchunks_of(K) * T * N, "parts")   # reused: no allocation, no page faults
        xp, wp, outp = <const float *>data(x), data(w_t), <float *>cnp.PyArray_DATA(out)
        bf = w_t.dtype == BF16
        with nogil:
            _gemvt(xp, <int>T, K, wp, N, outp, &pv[0], bf, num_threads)
    elif _sgemm != NULL:
        _gemm_openmp(x, w_t, out, True, num_threads)
    elif w_t.dtype == BF16:
        _linear_t_bf16_blas(x, w_t, out)
    else:
        np.matmul(x, w_t, out=out)


def _linear_bf16_blas(x, w, out):
    """out = x @ w.T, w bf16 (N, K): row blocks of w widened into scratch, one BLAS GEMM each."""
    cdef Py_ssize_t N = w.shape[0], K = w.shape[1], n0, m
    cdef Py_ssize_t nb = max(16, _block_elems // K)
    buf = scratch(nb * K)
    cdef float *bp = <float *>cnp.PyArray_DATA(buf)
    cdef const unsigned short *wp = <const unsigned short *>data(w)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        with nogil:
            widen_bf16(wp + n0 * K, bp, m * K)
        np.matmul(x, buf[: m * K].reshape(m, K).T, out=out[:, n0:n0 + m])


def _linear_t_bf16_blas(x, w_t, out):
    """out = x @ w_t, w_t bf16 (K, N): row blocks widened into scratch, x read once overall."""
    cdef Py_ssize_t K = w_t.shape[0], N = w_t.shape[1], T = x.shape[0], k0, m
    cdef Py_ssize_t nb = max(16, _block_elems // N)
    buf = scratch(nb * N)
    tmp = scratch(T * N, "tmp")[: T * N].reshape(T, N)   # (T, N) one block's product
    cdef float *bp = <float *>cnp.PyArray_DATA(buf)
    cdef const unsigned short *wp = <const unsigned short *>data(w_t)
    for k0 in range(0, K, nb):   # row blocks of w_t: contiguous reads
        m = min(nb, K - k0)
        with nogil:
            widen_bf16(wp + k0 * N, bp, m * N)
        blk = buf[: m * N].reshape(m, N)
        if k0 == 0:
            np.matmul(x[:, :m], blk, out=out)
        else:
            np.matmul(x[:, k0:k0 + m], blk, out=tmp)
            np.add(out, tmp, out=out)


def _dequantized(x, q, scale, out, bint transposed, int num_threads):
    """int8 weights without oneDNN: blocks of ~_block_elems weights dequantized into float32
    scratch (w = q * scale per output channel), each block through linear / linear_t."""
    cdef Py_ssize_t T = x.shape[0], K = x.shape[1], N = out.shape[1], r0, m
    rows = q.shape[0]
    nb = max(16, _block_elems // q.shape[1])
    buf = scratch(nb * q.shape[1], "dequant")
    part = scratch(T * N, "dequant_out")[: T * N].reshape(T, N) if transposed else None
    for r0 in range(0, rows, nb):
        m = min(nb, rows - r0)
        blk = buf[: m * q.shape[1]].reshape(m, q.shape[1])
        if transposed:   # rows r0.. of w_t (K, N): out += x[:, r0:r0+m] @ blk
            np.multiply(q[r0:r0 + m], scale[None, :], out=blk, casting="unsafe")
            xs = np.ascontiguousarray(x[:, r0:r0 + m])
            linear_t(xs, blk, out if r0 == 0 else part, num_threads)
            if r0:
                np.add(out, part, out=out)
        else:            # rows r0.. of w (N, K): out[:, r0:r0+m] = x @ blk.T
            np.multiply(q[r0:r0 + m], scale[r0:r0 + m, None], out=blk, casting="unsafe")
            if m == N:
                linear(x, blk, out, num_threads)
            else:
                o = scratch(T * m, "dequant_out")[: T * m].reshape(T, m)
                linear(x, blk, o, num_threads)
                out[:, r0:r0 + m] = o
