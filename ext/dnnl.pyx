"""oneDNN matmul primitives: out (M, N) float32 = x (M, K) float32 @ W, W one of
- float32 (N, K) or transposed (K, N): f32 x f32 -> f32;
- bf16 bits (uint16): x rounded to bf16 into a preallocated scratch, bf16 x bf16 -> f32 (float32
  accumulation on the AVX512_BF16 / AMX units where present);
- int8 with float32 per-output-channel scales, w[n, k] = q[n, k] * scale[n]: x quantized per row
  (token) on the fly, x[m, k] ~ xq[m, k] * s[m] with |xq| <= 127 (llama.cpp Q8_0 / oneDNN int8
  style), xq stored as u8 = xq + 128 so the product is u8 x s8 -> s32, the native VNNI / AMX-INT8
  form. out = (acc * scale[n] - 128 * colsum(q)[n] * scale[n]) * s[m]: the weights scale is
  oneDNN's attribute, the shift a per-column binary add post-op (its column sums computed once per
  weight), the row scale our own epilogue (a (M, 1) binary post-op sends 3.2 to `ref` for M > 1).

The library is onednn-cpu-gomp (oneDNN 3.2 on libgomp, the OpenMP runtime of our prange kernels:
one pool), loaded with dlopen (ext/dnnl_api.pxd). Primitives are created once per
(dtype, M, K, N, layout, threads) and cached per Python thread, with their scratchpad and
activation scratch: a call allocates nothing. Weights stay in their plain layout (the export's
read-only memory maps, no copy) unless packed=True asks for oneDNN's blocked layout, a copy kept
for the weight's lifetime (docs/design-notes.md#onednn). A primitive whose implementation is
oneDNN's reference one (`ref:...`, ~0.2 GFLOP/s) is refused: `implementation` returns None and
`matmul` raises Unsupported, so callers fall back to their own kernels.
"""

import os
import sys
import sysconfig
import threading

import numpy as np

cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.math cimport rintf
from libc.stdint cimport int8_t, int64_t, uint8_t, uint16_t, uint32_t
from openmp cimport omp_get_max_threads, omp_set_num_threads

from ext.dnnl_api cimport *
from ext.simd cimport bf16_bits

cnp.import_array()

PACKAGE = "onednn-cpu-gomp"
LIBRARY = "libdnnl.so.3"
# QWEN3_ONEDNN_LIBRARY: a path to libdnnl.so.3 to load instead, or "off" to run without oneDNN.
ENV = "QWEN3_ONEDNN_LIBRARY"
MAX_PRIMITIVES = 512

cdef enum:
    K_F32 = 0
    K_BF16 = 1
    K_S8 = 2

KINDS = {np.dtype(np.float32): K_F32, np.dtype(np.uint16): K_BF16, np.dtype(np.int8): K_S8}
_DT = {K_F32: DT_F32, K_BF16: DT_BF16, K_S8: DT_S8}


class Unsupported(RuntimeError):
    """oneDNN cannot run this product here (not loaded, or only its reference implementation)."""


cdef void *_engine = NULL
cdef void *_stream = NULL


def _candidates():
    """Where pip puts the package's libdnnl.so.3 (its data files go to <prefix>/lib), then the
    loader's own search path."""
    env = os.environ.get(ENV)
    if env:
        return [] if env == "off" else [env]
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sysconfig.get_path("data"), "lib"),
            os.path.join(sysconfig.get_path("data", f"{os.name}_user"), "lib")]
    return [os.path.join(d, LIBRARY) for d in dict.fromkeys(dirs)] + [LIBRARY]


def _load():
    """Load oneDNN and create its CPU engine and stream; the reason it failed, or None."""
    global _engine, _stream
    cdef char err[512]
    paths = _candidates()
    if not paths:
        return f"oneDNN disabled ({ENV}=off)"
    reasons = []
    for path in paths:
        if dnnl_load(path.encode(), err, sizeof(err)) == 0:
            break
        reasons.append(err.decode(errors="replace"))
    else:
        return (f"oneDNN not found: pip install {PACKAGE} (tried {', '.join(paths)}: "
                f"{reasons[len(reasons) - 1]})")
    if dnnl.dnnl_engine_create(&_engine, ENGINE_CPU, 0) != DNNL_SUCCESS:
        return "oneDNN: cannot create a CPU engine"
    if dnnl.dnnl_stream_create(&_stream, _engine, STREAM_DEFAULT) != DNNL_SUCCESS:
        return "oneDNN: cannot create a stream"
    return None


_error = _load()


def available() -> bool:
    """True when oneDNN loaded (products may still be refused: see implementation)."""
    return _error is None


def load_error() -> str | None:
    """Why oneDNN is not available (naming the package to install), or None."""
    return _error


def version() -> str | None:
    """The loaded oneDNN's version, "3.2.0", or None."""
    if _error is not None:
        return None
    cdef const dnnl_version_t *v = dnnl.dnnl_version()
    return f"{v.major}.{v.minor}.{v.patch}"


cdef void _check(int status, what) except *:
    if status != DNNL_SUCCESS:
        raise Unsupported(f"oneDNN {what} failed (status {status})")


cdef void *_md(int64_t d0, int64_t d1, int dt, int tag) except NULL:
    cdef int64_t dims[2]
    cdef void *md = NULL
    dims[0], dims[1] = d0, d1
    _check(dnnl.dnnl_memory_desc_create_with_tag(&md, 2, dims, dt, tag), "memory descriptor")
    return md


cdef void *_md1(int64_t n) except NULL:
    cdef void *md = NULL
    _check(dnnl.dnnl_memory_desc_create_with_tag(&md, 1, &n, DT_F32, TAG_A), "memory descriptor")
    return md


cdef void *_mem(const void *md) except NULL:
    cdef void *m = NULL
    _check(dnnl.dnnl_memory_create(&m, md, _engine, NULL), "memory")
    return m


cdef class Matmul:
    """One cached primitive: (M, K) x (K, N) weights -> (M, N) float32, for one dtype, weight
    layout and thread count, with every buffer its execution needs."""
    cdef void *pd
    cdef void *prim
    cdef void *mems[6]          # src, weights, dst, scratchpad, weight scales, column shift
    cdef dnnl_exec_arg_t args[6]
    cdef int nargs
    cdef readonly int kind, threads
    cdef readonly Py_ssize_t M, K, N
    cdef readonly bint transposed, packed
    cdef readonly str impl
    cdef object scratchpad, src_buf, row_scale   # numpy buffers, owned
    cdef void *src_p          # src_buf's data: bf16 or u8 activations (M, K)
    cdef float *row_p         # row_scale's data: the int8 activations' scales (M,)
    cdef const void *wmd         # the weights' memory descriptor the primitive expects (owned by pd)
    cdef readonly size_t weights_bytes
    cdef readonly size_t scratch_bytes   # what this primitive holds: scratchpad + activation scratch

    def __cinit__(self, int kind, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, bint transposed,
                  int threads, bint packed):
        self.kind, self.M, self.K, self.N = kind, M, K, N
        self.transposed, self.threads, self.packed = transposed, threads, packed
        cdef int saved = omp_get_max_threads()
        omp_set_num_threads(threads)   # oneDNN sizes its blocking for omp_get_max_threads()
        try:
            self._create()
        finally:
            omp_set_num_threads(saved)

    cdef _create(self):
        cdef int wdt = _DT[self.kind]
        cdef int sdt = DT_U8 if self.kind == K_S8 else wdt   # int8: activations as u8 = xq + 128
        cdef void *attr = NULL
        cdef void *po = NULL
        cdef void *mds[6]
        cdef const char *name = NULL
        cdef int i
        for i in range(6):
            mds[i] = NULL
        try:
            mds[0] = _md(self.M, self.K, sdt, TAG_AB)
            mds[1] = _md(self.K, self.N, wdt, TAG_ANY if self.packed else
                         (TAG_AB if self.transposed else TAG_BA))
            mds[2] = _md(self.M, self.N, DT_F32, TAG_AB)
            _check(dnnl.dnnl_primitive_attr_create(&attr), "attribute")
            _check(dnnl.dnnl_primitive_attr_set_scratchpad_mode(attr, SCRATCHPAD_USER), "scratchpad")
            if self.kind == K_S8:
                _check(dnnl.dnnl_primitive_attr_set_scales_mask(attr, ARG_WEIGHTS, 1 << 1), "scales")
                _check(dnnl.dnnl_post_ops_create(&po), "post-ops")
                mds[3] = _md(1, self.N, DT_F32, TAG_AB)    # column shift, per n
                _check(dnnl.dnnl_post_ops_append_binary(po, BINARY_ADD, mds[3]), "binary add")
                _check(dnnl.dnnl_primitive_attr_set_post_ops(attr, po), "post-ops")
            _check(dnnl.dnnl_matmul_primitive_desc_create(&self.pd, _engine, mds[0], mds[1], NULL,
                                                          mds[2], attr), "matmul")
            _check(dnnl.dnnl_primitive_desc_query(self.pd, QUERY_IMPL_INFO_STR, 0, &name), "query")
            self.impl = name.decode()
            if self.impl.startswith("ref"):
                raise Unsupported(f"oneDNN offers only its reference implementation {self.impl!r}")
            if self.kind == K_S8 and "vnni" not in self.impl and "amx" not in self.impl:
                # without VNNI / AMX, u8 x s8 pairs are summed in int16 (vpmaddubsw) and saturate:
                # 0.1-0.2 relative error measured with ONEDNN_MAX_CPU_ISA=SSE41
                raise Unsupported(f"oneDNN int8 {self.impl!r} has no VNNI/AMX: it would saturate")
            _check(dnnl.dnnl_primitive_create(&self.prim, self.pd), "primitive")
            self._bind(mds)
        finally:
            for i in range(6):
                if mds[i] != NULL:
                    dnnl.dnnl_memory_desc_destroy(mds[i])
            if po != NULL:
                dnnl.dnnl_post_ops_destroy(po)
            if attr != NULL:
                dnnl.dnnl_primitive_attr_destroy(attr)

    cdef _bind(self, void **mds):
        """Memory objects (handles set at each call) and the buffers this primitive owns."""
        cdef const void *wmd = dnnl.dnnl_primitive_desc_query_md(self.pd, QUERY_WEIGHTS_MD, 0)
        cdef const void *smd = dnnl.dnnl_primitive_desc_query_md(self.pd, QUERY_SCRATCHPAD_MD, 0)
        cdef void *scale_md = NULL
        self.wmd = wmd
        self.weights_bytes = dnnl.dnnl_memory_desc_get_size(wmd)
        self.scratchpad = np.empty(max(1, dnnl.dnnl_memory_desc_get_size(smd)), np.uint8)
        roles = [ARG_SRC, ARG_WEIGHTS, ARG_DST, ARG_SCRATCHPAD]
        self.mems[0], self.mems[1], self.mems[2] = _mem(mds[0]), _mem(wmd), _mem(mds[2])
        self.mems[3] = _mem(smd)
        dnnl.dnnl_memory_set_data_handle(self.mems[3], cnp.PyArray_DATA(self.scratchpad))
        if self.kind != K_F32:
            self.src_buf = np.empty(self.M * self.K, np.uint16 if self.kind == K_BF16 else np.uint8)
            self.src_p = cnp.PyArray_DATA(self.src_buf)
            dnnl.dnnl_memory_set_data_handle(self.mems[0], self.src_p)
        if self.kind == K_S8:
            self.row_scale = np.empty(self.M, np.float32)
            self.row_p = <float *>cnp.PyArray_DATA(self.row_scale)
            scale_md = _md1(self.N)   # scales are 1-D (count) memories
            try:
                self.mems[4] = _mem(scale_md)
            finally:
                dnnl.dnnl_memory_desc_destroy(scale_md)
            self.mems[5] = _mem(mds[3])
            roles += [ARG_ATTR_SCALES | ARG_WEIGHTS, ARG_POST_OP_0 | ARG_SRC_1]
        self.scratch_bytes = self.scratchpad.nbytes + sum(
            0 if b is None else b.nbytes for b in (self.src_buf, self.row_scale))
        self.nargs = len(roles)
        for i, role in enumerate(roles):
            self.args[i].arg = role
            self.args[i].memory = self.mems[i]

    def __dealloc__(self):
        for i in range(6):
            if self.mems[i] != NULL:
                dnnl.dnnl_memory_destroy(self.mems[i])
        if self.prim != NULL:
            dnnl.dnnl_primitive_destroy(self.prim)
        if self.pd != NULL:
            dnnl.dnnl_primitive_desc_destroy(self.pd)

    cdef int run(self, const float *x, const void *w, float *out, const float *scale,
                 const float *shift) noexcept nogil:
        """out = x @ W for this primitive's shape; 0 on success, else oneDNN's status."""
        cdef int saved = omp_get_max_threads(), status
        if self.kind == K_F32:
            dnnl.dnnl_memory_set_data_handle(self.mems[0], <void *>x)
        elif self.kind == K_BF16:
            to_bf16(x, <uint16_t *>self.src_p, self.M * self.K, self.threads)
        else:
            quantize_rows(x, self.M, self.K, <uint8_t *>self.src_p, self.row_p, self.threads)
            dnnl.dnnl_memory_set_data_handle(self.mems[4], <void *>scale)
            dnnl.dnnl_memory_set_data_handle(self.mems[5], <void *>shift)
        dnnl.dnnl_memory_set_data_handle(self.mems[1], <void *>w)
        dnnl.dnnl_memory_set_data_handle(self.mems[2], out)
        omp_set_num_threads(self.threads)
        status = dnnl.dnnl_primitive_execute(self.prim, _stream, self.nargs, self.args)
        if status == DNNL_SUCCESS:
            status = dnnl.dnnl_stream_wait(_stream)
        omp_set_num_threads(saved)
        if self.kind == K_S8 and status == DNNL_SUCCESS:
            scale_rows(out, self.row_p, self.M, self.N, self.threads)
        return status


cdef inline float u2f(uint32_t u) noexcept nogil:
    return (<float *>&u)[0]


cdef void to_bf16(const float *x, uint16_t *y, Py_ssize_t n, int threads) noexcept nogil:
    """y = bf16(x), n elements, in blocks of 16K over the threads."""
    cdef Py_ssize_t nb = (n + 16383) // 16384, b, i, i1
    with nogil, parallel(num_threads=threads if nb > 1 else 1):
        for b in prange(nb, schedule="static"):
            i1 = (b + 1) * 16384 if (b + 1) * 16384 < n else n
            for i in range(b * 16384, i1):
                y[i] = bf16_bits(x[i])


cdef void quantize_rows(const float *x, Py_ssize_t M, Py_ssize_t K, uint8_t *q, float *s,
                        int threads) noexcept nogil:
    """Per row m: s[m] = max_k |x[m, k]| / 127, q[m, k] = round(x[m, k] / s[m]) + 128 (s = 1 for a
    zero row). The maximum is taken on the bits (|x| as uint32 orders like the float), which GCC
    vectorises where a float max reduction would stay scalar without -ffast-math."""
    cdef Py_ssize_t m, k
    cdef uint32_t amax, a
    cdef float inv, f
    cdef const uint32_t *xb = <const uint32_t *>x
    with nogil, parallel(num_threads=threads if M > 1 else 1):
        for m in prange(M, schedule="static"):
            amax = 0
            for k in range(K):
                a = xb[m * K + k] & 0x7FFFFFFF
                amax = a if a > amax else amax
            f = u2f(amax) / 127.0
            s[m] = f if f > 0 else 1.0
            inv = 1.0 / s[m]
            for k in range(K):
                q[m * K + k] = <uint8_t>(<int>rintf(x[m * K + k] * inv) + 128)


cdef void scale_rows(float *out, const float *s, Py_ssize_t M, Py_ssize_t N,
                     int threads) noexcept nogil:
    """out[m, :] *= s[m]: the activations' row scales (a (M, 1) binary post-op sends oneDNN 3.2
    to its reference implementation for M > 1)."""
    cdef Py_ssize_t m, n
    with nogil, parallel(num_threads=threads if M > 1 else 1):
        for m in prange(M, schedule="static"):
            for n in range(N):
                out[m * N + n] = out[m * N + n] * s[m]


_local = threading.local()   # per Python thread: the primitives and the int8 weights' shifts
# Primitives kept per thread: a run uses a few (decode's M = 1, the prompt's chunk lengths) per
# weight shape; ~0.2-0.5 ms to create one again.


def _cache(name):
    c = getattr(_local, name, None)
    if c is None:
        c = {}
        setattr(_local, name, c)
    return c


def primitive(w_dtype, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, bint transposed=False,
              int num_threads=1, bint packed=False) -> Matmul:
    """The cached primitive for x (M, K) @ W (K, N) with weights of w_dtype (float32, uint16 = bf16
    bits, int8); raises Unsupported when oneDNN is absent or offers only `ref`."""
    if _error is not None:
        raise Unsupported(_error)
    kind = KINDS.get(np.dtype(w_dtype))
    if kind is None:
        raise ValueError(f"oneDNN matmul: weights float32, uint16 (bf16) or int8, got {w_dtype}")
    key = (kind, M, K, N, bool(transposed), num_threads, bool(packed))
    cache = _cache("prims")
    mm = cache.get(key)
    if mm is None:
        if len(cache) >= MAX_PRIMITIVES:   # many token counts (tests, varying prompts): oldest out
            del cache[next(iter(cache))]
        try:
            mm = Matmul(kind, M, K, N, transposed, num_threads, packed)
        except Unsupported as e:
            mm = e
        cache[key] = mm
    if isinstance(mm, Unsupported):
        raise mm
    return mm


def implementation(w_dtype, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N, bint transposed=False,
                   int num_threads=1, bint packed=False) -> str | None:
    """oneDNN's implementation name for this product ("brg:avx512_core_amx", ...), or None when
    oneDNN would not run it (absent, or only its reference implementation)."""
    try:
        return primitive(w_dtype, M, K, N, transposed, num_threads, packed).impl
    except Unsupported:
        return None


cdef inline size_t _addr(a):
    return <size_t>cnp.PyArray_DATA(a)


def _shift(q, scale, bint transposed):
    """-128 * sum_k q[k, n] * scale[n], (N,) float32: cancels the +128 of the u8 activations.
    Computed once per weight (cached with a reference to it, so its address stays its own)."""
    cache = _cache("shifts")
    key = (_addr(q), _addr(scale), q.shape[0], q.shape[1], transposed)
    hit = cache.get(key)
    if hit is None:
        colsum = q.sum(axis=0 if transposed else 1, dtype=np.int64)
        hit = (q, scale, (-128.0 * colsum * scale.astype(np.float64)).astype(np.float32))
        cache[key] = hit
    return hit[2]


def same_layout(Matmul a, Matmul b) -> bool:
    """True when the two primitives expect their weights in the same layout."""
    return bool(dnnl.dnnl_memory_desc_equal(a.wmd, b.wmd))


def _packed(w, Matmul mm):
    """w in the primitive's blocked weights layout: one reorder per layout (primitives of other
    M that expect the same layout share it), kept with a reference to w.
    Keyed by address and shape (a view of the same memory hits too): holding w keeps that
    memory from being reused, and the export's weights are never rewritten in place."""
    cache = _cache("packed")
    key = (_addr(w), mm.K, mm.N, mm.transposed)
    entries = cache.get(key)
    if entries is not None and len(entries) == 3 and entries[1] is mm:
        return entries[2]   # the common case: one layout, asked for by this same primitive
    if entries is None:
        entries = cache[key] = [w]
    for owner, buf in zip(entries[1::2], entries[2::2], strict=True):
        if same_layout(owner, mm):
            return buf
    buf = _reorder(w, mm)
    entries += [mm, buf]
    return buf


def packed_bytes() -> int:
    """Bytes held by this thread's packed weight copies."""
    return sum(b.nbytes for e in _cache("packed").values() for b in e[2::2])


def _reorder(w, Matmul mm):
    cdef void *src_md = _md(mm.K, mm.N, _DT[mm.kind], TAG_AB if mm.transposed else TAG_BA)
    cdef const void *dst_md = dnnl.dnnl_primitive_desc_query_md(mm.pd, QUERY_WEIGHTS_MD, 0)
    cdef void *pd = NULL
    cdef void *prim = NULL
    cdef void *sm = NULL
    cdef void *dm = NULL
    cdef dnnl_exec_arg_t args[2]
    out = np.empty(mm.weights_bytes, np.uint8)
    try:
        _check(dnnl.dnnl_reorder_primitive_desc_create(&pd, src_md, _engine, dst_md, _engine, NULL),
               "reorder")
        _check(dnnl.dnnl_primitive_create(&prim, pd), "reorder primitive")
        sm, dm = _mem(src_md), _mem(dst_md)
        dnnl.dnnl_memory_set_data_handle(sm, cnp.PyArray_DATA(w))
        dnnl.dnnl_memory_set_data_handle(dm, cnp.PyArray_DATA(out))
        args[0].arg, args[0].memory = ARG_SRC, sm
        args[1].arg, args[1].memory = ARG_DST, dm
        _check(dnnl.dnnl_primitive_execute(prim, _stream, 2, args), "reorder")
        _check(dnnl.dnnl_stream_wait(_stream), "reorder")
    finally:
        for h in (<size_t>sm, <size_t>dm):
            if h:
                dnnl.dnnl_memory_destroy(<void *>h)
        if prim != NULL:
            dnnl.dnnl_primitive_destroy(prim)
        if pd != NULL:
            dnnl.dnnl_primitive_desc_destroy(pd)
        dnnl.dnnl_memory_desc_destroy(src_md)
    return out


def matmul(x, w, out, int num_threads=1, bint transposed=False, scale=None,
           bint packed=False) -> str:
    """out = x @ w.T (w (N, K)) or x @ w (transposed: w (K, N)); x (M, K), out (M, N) float32.

    w float32, bf16 bits (uint16) or int8 with scale (N,) float32 (w = q * scale per output
    column). Returns the implementation that ran; raises Unsupported when oneDNN cannot run it.
    """
    if x.ndim != 2 or w.ndim != 2 or out.ndim != 2:
        raise ValueError(f"oneDNN matmul: 2-D x, w, out, got {x.shape}, {w.shape}, {out.shape}")
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1]
    cdef Py_ssize_t N = w.shape[1] if transposed else w.shape[0]
    wshape = (K, N) if transposed else (N, K)
    for name, a, dt, shape in (("x", x, np.float32, (M, K)), ("w", w, w.dtype, wshape),
                               ("out", out, np.float32, (M, N))):
        if a.dtype != dt or a.shape != shape or not a.flags.c_contiguous:
            raise ValueError(f"oneDNN matmul: {name} must be C-contiguous {np.dtype(dt).name} "
                             f"{shape}, got {a.dtype} {a.shape}")
    if (w.dtype == np.int8) != (scale is not None):
        raise ValueError("oneDNN matmul: int8 weights need scale (N,) float32, other dtypes none")
    if scale is not None and (scale.dtype != np.float32 or scale.shape != (N,)
                              or not scale.flags.c_contiguous):
        raise ValueError(f"oneDNN matmul: scale must be C-contiguous float32 ({N},), "
                         f"got {scale.dtype} {scale.shape}")
    if num_threads < 1:
        raise ValueError(f"oneDNN matmul: num_threads must be >= 1, got {num_threads}")
    cdef Matmul mm = primitive(w.dtype, M, K, N, transposed, num_threads, packed)
    wa = _packed(w, mm) if packed else w
    cdef const float *sp = NULL
    cdef const float *hp = NULL
    if scale is not None:
        shift = _shift(w, scale, transposed)
        sp, hp = <const float *>cnp.PyArray_DATA(scale), <const float *>cnp.PyArray_DATA(shift)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef const void *wp = cnp.PyArray_DATA(wa)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef int status
    with nogil:
        status = mm.run(xp, wp, op, sp, hp)
    _check(status, f"matmul {mm.impl}")
    return mm.impl
