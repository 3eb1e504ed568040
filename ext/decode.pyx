"""One decode step through a stack of Qwen3 layers in one call: the per-op path without Python.

A decode step at one token runs per layer seven kernels (rmsnorm, q/k/v, q/k norm + RoPE,
attention, o_proj, add + rmsnorm, MLP), each behind a Python wrapper that checks its arguments
and takes memoryviews: on a small model that is most of the step. `DecodeStack` checks a rank's
layers once, keeps raw pointers, and `step` runs every layer in C:

    n = rms(x); q, k[pos], v[pos] = n @ wq.T, n @ wk.T, n @ wv.T   (k, v straight into the cache)
    q, k[pos] = rope(q_norm(q)), rope(k_norm(k[pos]))
    att = attention(q, k[:pos+1], v[:pos+1]);  x += att @ wo_t
    n = rms(x);  x += (silu(n @ w_gate.T) * (n @ w_up.T)) @ w_down_t

with the same cores as the per-op path (ext/linear.pxd, ext/mlp.pxd, ext/attention.pxd,
ext/rows.pxd). Under tensor parallelism o_proj's and down_proj's outputs are partial sums:
`step(x, pos, reduce)` then calls reduce(o) on each (an Allreduce, in Python) between the
compiled halves of a layer. float32 weights: the per-op path's bits. int8 (with per-channel
scales: each product's input quantized per token, ext/qgemv.h, as ext.linear does at one token)
and bf16 read o_proj and down_proj from row copies made here: int8's exact int32 sums keep the
per-op path's bits; bf16 sums those two products in another order, so its logits are the per-op
path's within float32 rounding. Measured: docs/design-notes.md#fixed-cost, #bf16-rows.
"""

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t
from libc.stdlib cimport free, malloc

from ext.attention cimport _attention_decode, _decode_work
from ext.gemv cimport ROW_BLOCK, gemv_rows, gemvt_rows, nchunks_of, reduce_parts
from ext.linear cimport _gemv_many, _gemvt, _q8_gemv_many, q8_isa
from ext.mlp cimport _mlp_small, _q8_mlp
from ext.qgemv cimport q8_quantize
from ext.rows cimport norm_row, rope_row
from ext.simd cimport silu_mul_f32

from ext.hugepages import copies as huge_copies
from ext.linear import BF16, INT8, WEIGHT_DTYPES, check_array

cnp.import_array()

# the order of a layer's arrays in DecodeStack(layers=...): the fields of the export's LayerWeights
FIELDS = ("attn_norm", "wq", "wk", "wv", "q_norm", "k_norm", "wo_t", "mlp_norm", "w_gate", "w_up",
          "w_down_t")
# int8 weights' scales (DecodeStack(scales=...)), one tuple per layer in this order: float32 over the
# output channels (rows of wq..., columns of wo_t and w_down_t, (d,))
SCALE_FIELDS = ("wq_scale", "wk_scale", "wv_scale", "wo_t_scale", "w_gate_scale", "w_up_scale",
                "w_down_t_scale")


cdef struct Layer:
    const float *attn_norm   # (d,)
    const void *wq           # (H*D, d)
    const void *wk           # (Hkv*D, d)
    const void *wv           # (Hkv*D, d)
    const float *q_norm      # (D,)
    const float *k_norm      # (D,)
    const void *wo_t         # (H*D, d) float32; int8, bf16: o_proj's rows instead, (d, H*D)
    const float *mlp_norm    # (d,)
    const void *wg           # (I, d)
    const void *wu           # (I, d)
    const void *wd           # (I, d)  down_proj transposed; int8, bf16: its rows, (d, I)
    const float *sq          # int8 only: the scales of wq, wk, wv (their rows), wo_t (d,),
    const float *sk          # w_gate, w_up (rows), w_down_t (d,); NULL otherwise
    const float *sv
    const float *so
    const float *sg
    const float *su
    const float *sd
    float *kc                # (S_max, Hkv, D) this layer's key cache
    float *vc                # (S_max, Hkv, D)


cdef inline void *ptr(a):
    return cnp.PyArray_DATA(a)


# One thread: the cores' work items in order on the calling thread, with no OpenMP region (even
# a team of one costs libgomp a team set-up and a futex call: docs/design-notes.md#fixed-cost).
# Items write disjoint rows and partial sums are added in chunk order, so the bits are the cores'.

cdef void _gemv_serial(const float *x, Py_ssize_t K, int m, const void **w, const Py_ssize_t *N,
                       float **out, int bf) noexcept nogil:
    """out[j] = x @ w[j].T for one token, the row blocks of _gemv_many in order."""
    cdef int j
    cdef Py_ssize_t n0
    for j in range(m):
        n0 = 0
        while n0 < N[j]:
            gemv_rows(x, 1, K, w[j], K, n0, min(n0 + ROW_BLOCK, N[j]), out[j], N[j], bf)
            n0 = n0 + ROW_BLOCK


cdef void _gemvt_serial(const float *x, Py_ssize_t K, const void *w_t, Py_ssize_t N, float *out,
                        float *parts, int bf) noexcept nogil:
    """out = x @ w_t for one token, _gemvt's chunks in order."""
    cdef Py_ssize_t nchunks = nchunks_of(K), ch
    if nchunks == 1:
        gemvt_rows(x, 1, K, w_t, N, 0, K, out, bf)
        return
    for ch in range(nchunks):
        gemvt_rows(x, 1, K, w_t, N, K * ch // nchunks, K * (ch + 1) // nchunks, parts + ch * N, bf)
    reduce_parts(parts, nchunks, N, out)


cdef void _mlp_serial(const float *x, Py_ssize_t d, Py_ssize_t I, const void *wg, const void *wu,
                      const void *wd, float *gate, float *up, float *out, float *parts,
                      int bf, int down_rows) noexcept nogil:
    """_mlp_small for one token: gate's and up's row blocks, silu * up, down's row blocks (wd
    down_proj's rows, (d, I)) or chunks (wd transposed, (I, d))."""
    cdef const void *w[2]
    cdef float *o[2]
    cdef Py_ssize_t N[2]
    w[0], w[1], o[0], o[1], N[0], N[1] = wg, wu, gate, up, I, I
    _gemv_serial(x, d, 2, w, N, o, bf)
    silu_mul_f32(gate, up, I)
    if down_rows:
        w[0], o[0], N[0] = wd, out, d
        _gemv_serial(gate, I, 1, w, N, o, bf)
    else:
        _gemvt_serial(gate, I, wd, d, out, parts, bf)


def _check_layers(layers, scales):
    """Every layer's arrays (and int8 scales) against the first's shapes; (H, Hkv, D, d, I, dtype)."""
    if not layers:
        raise ValueError("DecodeStack needs at least one layer")
    first = dict(zip(FIELDS, layers[0], strict=True))
    D, d = first["q_norm"].shape[0], first["attn_norm"].shape[0]
    if D < 2 or D % 2 or first["wq"].shape[0] % D or first["wk"].shape[0] % D:
        raise ValueError(f"head_dim {D} must be even and divide q/k rows {first['wq'].shape[0]}, "
                         f"{first['wk'].shape[0]}")
    H, Hkv, I = first["wq"].shape[0] // D, first["wk"].shape[0] // D, first["w_gate"].shape[0]
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"query heads {H} must be a multiple of KV heads {Hkv}")
    wdt = first["wq"].dtype
    if wdt not in WEIGHT_DTYPES + (INT8,):
        raise ValueError(f"DecodeStack: float32, bf16 or int8 weights, got {wdt}")
    if (wdt == INT8) != (scales is not None) or (scales is not None and len(scales) != len(layers)):
        raise ValueError("DecodeStack: int8 weights need scales, one tuple per layer; other dtypes none")
    shapes = dict(attn_norm=(d,), wq=(H * D, d), wk=(Hkv * D, d), wv=(Hkv * D, d), q_norm=(D,),
                  k_norm=(D,), wo_t=(H * D, d), mlp_norm=(d,), w_gate=(I, d), w_up=(I, d),
                  w_down_t=(I, d))
    scale_shapes = dict(wq_scale=(H * D,), wk_scale=(Hkv * D,), wv_scale=(Hkv * D,), wo_t_scale=(d,),
                        w_gate_scale=(I,), w_up_scale=(I,), w_down_t_scale=(d,))
    for i, arrays in enumerate(layers):
        for name, a in zip(FIELDS, arrays, strict=True):
            dt = (np.float32,) if name.endswith("norm") else (wdt,)
            check_array(f"layer {i} {name}", a, dt, shapes[name])
        for name, a in zip(SCALE_FIELDS, scales[i] if scales is not None else (None,) * 7,
                           strict=True):
            if a is not None:
                check_array(f"layer {i} {name}", a, (np.float32,), scale_shapes[name])
    return H, Hkv, D, d, I, wdt


cdef class DecodeStack:
    """A rank's layers for one-token decode steps; `step(x, pos)` runs them all."""
    cdef Layer *layers
    cdef int L, H, Hkv, D, bf, nt
    cdef bint online, int8, rows   # rows: o_proj and down_proj as row copies (int8, bf16)
    cdef Py_ssize_t d, n_ff, S_max, max_pos   # n_ff: I (a C macro name, from complex.h)
    cdef float eps, scale
    cdef const float *cos
    cdef const float *sin
    cdef float *n
    cdef float *q
    cdef float *att
    cdef float *o
    cdef float *gate
    cdef float *up
    cdef float *parts
    cdef float *scores
    cdef float *work
    cdef int8_t *xq     # int8: (max(d, H*D, I),) the product's input quantized per token
    cdef int8_t *gq     # int8: (I,) silu(gate) * up quantized
    cdef object keep   # every array a pointer points into, alive as long as this object
    cdef object o_rows  # (1, d) view of o: what reduce(o) completes in place

    def __cinit__(self):
        self.layers = NULL

    def __init__(self, layers, k_cache, v_cache, cos, sin, float eps, float scale,
                 algo="online_softmax", int num_threads=1, scales=None):
        """layers: one tuple of arrays per layer, in FIELDS order (float32, bf16 or int8 matrices,
        float32 norms); scales: for int8 matrices, one tuple per layer in SCALE_FIELDS order;
        k_cache, v_cache (L, S_max, Hkv, D) float32; cos, sin (max_pos, D/2) float32 (the RoPE
        tables of ext.ops.rope_table); scale: attention's, usually D^-0.5."""
        cdef Py_ssize_t j, per_layer
        if algo not in ("online_softmax", "standard"):
            raise ValueError(f"unknown attention algo {algo!r}; expected 'standard' or 'online_softmax'")
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        H, Hkv, D, d, I, wdt = _check_layers(layers, scales)
        L = len(layers)
        cache_shape = (L, k_cache.shape[1] if k_cache.ndim == 4 else 0, Hkv, D)
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            check_array(name, c, (np.float32,), cache_shape)
            if not c.flags.writeable:
                raise ValueError(f"{name} must be writable")
        for name, t in (("cos", cos), ("sin", sin)):
            check_array(name, t, (np.float32,), (cos.shape[0], D // 2))
        self.L, self.H, self.Hkv, self.D, self.d, self.n_ff = L, H, Hkv, D, d, I
        self.S_max, self.max_pos = k_cache.shape[1], cos.shape[0]
        self.bf, self.nt, self.eps, self.scale = wdt == BF16, num_threads, eps, scale
        self.int8 = wdt == INT8
        self.rows = self.int8 or self.bf
        self.online = algo == "online_softmax"
        parts = max(nchunks_of(H * D), nchunks_of(I)) * d   # floats, or int32 sums for int8
        # scratch: n, o (d); q, att (H*D); gate, up (I); o_proj's / down's partial sums; the
        # standard algorithm's scores (H, S_max); int8: a product's input and silu * up quantized
        bufs = [np.zeros(m, np.float32) for m in (d, H * D, H * D, d, I, I, parts, H * self.S_max)]
        bufs += [np.zeros(max(d, H * D, I), np.int8), np.zeros(I, np.int8)]
        # attention's partials and per-thread scores, sized for the longest context: the blocks
        # of keys grow with the length, so no shorter one needs more
        bufs.append(np.zeros(_decode_work(self.S_max, H, D, num_threads, self.online), np.float32))
        # int8, bf16: o_proj and down_proj as rows, (d, H*D) and (d, I), copies of the export's
        # transposed matrices: read as one sequential stream per thread, 1.7x the transposed
        # kernel's speed for int8, 1.2x the layers' for bf16 (docs/design-notes.md#int8-gemv,
        # #bf16-rows); (H*D*d + I*d) * itemsize bytes per layer of private memory
        rows = [None] * L
        if self.rows:   # in one huge-page mapping: numpy put them in 4 KiB pages, read 1.2-1.6x slower
            # (ext/hugepages.py, docs/design-notes.md#huge-copies)
            flat = huge_copies([m.T for a in layers for m in (a[6], a[10])])
            rows = [(flat[2 * j], flat[2 * j + 1]) for j in range(L)]
        self.keep = (list(layers), scales, k_cache, v_cache, cos, sin, bufs, rows)
        self.n, self.q, self.att, self.o, self.gate, self.up, self.parts, self.scores = (
            <float *>ptr(bufs[0]), <float *>ptr(bufs[1]), <float *>ptr(bufs[2]),
            <float *>ptr(bufs[3]), <float *>ptr(bufs[4]), <float *>ptr(bufs[5]),
            <float *>ptr(bufs[6]), <float *>ptr(bufs[7]))
        self.xq, self.gq = <int8_t *>ptr(bufs[8]), <int8_t *>ptr(bufs[9])
        self.work = <float *>ptr(bufs[10])
        self.o_rows = bufs[3].reshape(1, d)
        self.cos, self.sin = <const float *>ptr(cos), <const float *>ptr(sin)
        self.layers = <Layer *>malloc(L * sizeof(Layer))
        if self.layers == NULL:
            raise MemoryError("DecodeStack: no memory for the layer table")
        per_layer = self.S_max * Hkv * D
        for j in range(L):
            a = dict(zip(FIELDS, layers[j], strict=True))
            if self.rows:
                a["wo_t"], a["w_down_t"] = rows[j]
            self._set_layer(j, a, None if scales is None else scales[j],
                            <float *>ptr(k_cache) + j * per_layer, <float *>ptr(v_cache) + j * per_layer)

    cdef _set_layer(self, int j, a, sc, float *kc, float *vc):
        cdef Layer *w = &self.layers[j]
        w.attn_norm, w.q_norm, w.k_norm, w.mlp_norm = (
            <const float *>ptr(a["attn_norm"]), <const float *>ptr(a["q_norm"]),
            <const float *>ptr(a["k_norm"]), <const float *>ptr(a["mlp_norm"]))
        w.wq, w.wk, w.wv, w.wo_t = ptr(a["wq"]), ptr(a["wk"]), ptr(a["wv"]), ptr(a["wo_t"])
        w.wg, w.wu, w.wd = ptr(a["w_gate"]), ptr(a["w_up"]), ptr(a["w_down_t"])
        w.sq = w.sk = w.sv = w.so = w.sg = w.su = w.sd = NULL
        if sc is not None:
            w.sq, w.sk, w.sv, w.so = (<const float *>ptr(sc[0]), <const float *>ptr(sc[1]),
                                      <const float *>ptr(sc[2]), <const float *>ptr(sc[3]))
            w.sg, w.su, w.sd = (<const float *>ptr(sc[4]), <const float *>ptr(sc[5]),
                                <const float *>ptr(sc[6]))
        w.kc, w.vc = kc, vc

    def __dealloc__(self):
        free(self.layers)

    @property
    def row_copies(self) -> list:
        """int8, bf16: the private (o_proj rows, down_proj rows) copies of each layer; else []."""
        return list(self.keep[7]) if self.rows else []

    def step(self, x, Py_ssize_t pos, reduce=None):
        """x (1, d) float32, in place: the token at position pos through every layer; its keys and
        values are written at pos of each layer's cache, attention reads positions 0..pos.
        reduce: None, or a callable completing o_proj's and down_proj's (1, d) partial sums in
        place (the tensor-parallel Allreduce), called twice per layer."""
        check_array("x", x, (np.float32,), (1, self.d))
        if not 0 <= pos < min(self.S_max, self.max_pos):
            raise ValueError(f"position {pos} outside the cache ({self.S_max}) or the RoPE table "
                             f"({self.max_pos})")
        cdef float *xp = <float *>ptr(x)
        cdef int l
        if reduce is None:
            with nogil:
                for l in range(self.L):
                    self._attention(l, xp, pos)
                    self._mlp(l, xp)
                    self._add_o(xp)
        else:
            o = self.o_rows
            for l in range(self.L):
                with nogil:
                    self._attention(l, xp, pos)
                reduce(o)
                with nogil:
                    self._mlp(l, xp)
                reduce(o)
                with nogil:
                    self._add_o(xp)

    cdef void _attention(self, int l, float *x, Py_ssize_t pos) noexcept nogil:
        """o = attention block of layer l at x (o_proj's output; a partial sum under TP)."""
        cdef const void *wp[3]
        cdef float *op[3]
        cdef const float *sp[3]
        cdef float sx
        cdef Py_ssize_t Ns[3]
        cdef Py_ssize_t HD = self.H * self.D, KD = self.Hkv * self.D, half = self.D // 2
        cdef const float *cos = self.cos + pos * half
        cdef const float *sin = self.sin + pos * half
        cdef int h
        cdef Layer *w = &self.layers[l]
        Ns[0], Ns[1], Ns[2] = HD, KD, KD
        norm_row(x, w.attn_norm, self.eps, self.n, self.d)
        wp[0], wp[1], wp[2] = w.wq, w.wk, w.wv
        op[0], op[1], op[2] = self.q, w.kc + pos * KD, w.vc + pos * KD
        if self.int8:
            sp[0], sp[1], sp[2] = w.sq, w.sk, w.sv
            sx = q8_quantize(self.n, self.d, self.xq)
            _q8_gemv_many(self.xq, sx, self.d, 3, wp, sp, Ns, op, q8_isa(), self.nt)
        elif self.nt == 1:
            _gemv_serial(self.n, self.d, 3, wp, Ns, op, self.bf)
        else:
            _gemv_many(self.n, 1, self.d, 3, wp, Ns, op, self.bf, self.nt)
        for h in range(self.H):
            norm_row(self.q + h * self.D, w.q_norm, self.eps, self.q + h * self.D, self.D)
            rope_row(self.q + h * self.D, cos, sin, half)
        for h in range(self.Hkv):
            norm_row(op[1] + h * self.D, w.k_norm, self.eps, op[1] + h * self.D, self.D)
            rope_row(op[1] + h * self.D, cos, sin, half)
        _attention_decode(self.q, w.kc, w.vc, self.att, NULL, NULL, pos + 1, self.H, self.Hkv,
                          self.D, self.scale, self.online, self.scores, self.work, self.nt)
        if self.int8:
            sx = q8_quantize(self.att, HD, self.xq)
            wp[0], sp[0], Ns[0], op[0] = w.wo_t, w.so, self.d, self.o   # wo_t holds o_proj's rows
            _q8_gemv_many(self.xq, sx, HD, 1, wp, sp, Ns, op, q8_isa(), self.nt)
        elif self.rows:   # wo_t holds o_proj's rows
            wp[0], Ns[0], op[0] = w.wo_t, self.d, self.o
            if self.nt == 1:
                _gemv_serial(self.att, HD, 1, wp, Ns, op, self.bf)
            else:
                _gemv_many(self.att, 1, HD, 1, wp, Ns, op, self.bf, self.nt)
        elif self.nt == 1:
            _gemvt_serial(self.att, HD, w.wo_t, self.d, self.o, self.parts, self.bf)
        else:
            _gemvt(self.att, 1, HD, w.wo_t, self.d, self.o, self.parts, self.bf, self.nt)

    cdef void _mlp(self, int l, float *x) noexcept nogil:
        """x += o; o = MLP of layer l at rms(x) (down_proj's output; a partial sum under TP)."""
        cdef Layer *w = &self.layers[l]
        self._add_o(x)
        norm_row(x, w.mlp_norm, self.eps, self.n, self.d)
        if self.int8:
            _q8_mlp(self.xq, q8_quantize(self.n, self.d, self.xq), self.d, self.n_ff,
                    <const int8_t *>w.wg, w.sg, <const int8_t *>w.wu, w.su, <const int8_t *>w.wd,
                    w.sd, self.gate, self.up, self.gq, self.o, q8_isa(), self.nt)
        elif self.nt == 1:
            _mlp_serial(self.n, self.d, self.n_ff, w.wg, w.wu, w.wd, self.gate, self.up, self.o,
                        self.parts, self.bf, self.rows)
        else:
            _mlp_small(self.n, 1, self.d, self.n_ff, w.wg, w.wu, w.wd, self.gate, self.up, self.o,
                       self.parts, self.bf, self.rows, self.nt)

    cdef void _add_o(self, float *x) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(self.d):
            x[i] = x[i] + self.o[i]
