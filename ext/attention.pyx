"""Causal grouped-query attention, `standard` and `online_softmax`, and the merge of partials.

The two algorithms differ in what they hold. `standard` is the textbook (and Hugging Face
"eager") algorithm: the full score tensor, every query head x query x key, is materialised,
softmaxed and multiplied by V: O(H T S) floats (1 GiB for 16 heads at T = S = 4096). The caller
may pass it as a reusable workspace (`scores`, standard_scores_size floats); otherwise it is
allocated per call. `online_softmax` streams over blocks of keys with a running max and sum and
holds one (block x rows) score tile per thread: O(block) memory, whatever T and S.

One query (T = 1: decode) takes its own path, split over an even number of equal blocks of at
most DECODE_KEYS keys instead (flash-decoding): the KV cache is (S, Hkv, D), so a block of keys for all heads is one
contiguous stretch of memory, streamed in order, where one head's keys are 512-byte pieces 4 KiB
apart. online_softmax: each block's partial (max, sum, output) per head, merged in block order.
standard: the whole (H, S) score row materialised, one softmax, then P V by blocks.

Work is split over (KV head g, query block): the G = H // Hkv query heads that share KV head g
and BQ consecutive queries form the R = BQ * G rows of one work item, so every K and V row
loaded from memory is reused for R rows. Scores are kept key-major, St[c, r], so that the
Q.K products vectorise over rows without horizontal sums (Q is stored transposed, Qt[D, Rp]).
The SIMD inner loops are small C helpers (GCC vector extensions, in ext/attention_tiles.h):
Cython cannot express a vector register tile, and plain loops with float reductions do not
vectorise without -ffast-math.
"""

from cython.parallel cimport parallel, prange
from openmp cimport omp_get_thread_num
from libc.math cimport INFINITY, expf
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from ext.linear import scratch  # a float32 buffer kept per Python thread across calls

# Not called here: cimporting it brings the shared vector helpers' C code into this module.
from ext.simd cimport silu_mul_f32

cdef extern from "attention_tiles.h" nogil:
    void decode_scores(const float *q, const float *K, int H, int Hkv, int D, Py_ssize_t c0,
                       int nk, float scale, float *s, Py_ssize_t lds)
    void softmax_rows(float *s, int H, int nk, Py_ssize_t lds, float *m, float *l)
    void merge_blocks(const float *parts, Py_ssize_t nb, Py_ssize_t per, int H, int D, int online,
                      float *out, float *m_out, float *l_out)
    void decode_pv(const float *s, Py_ssize_t lds, const float *V, int H, int Hkv, int D,
                   Py_ssize_t c0, int nk, float *o)
    void qk_rows(const float *Q, int R, int D, const float *K, Py_ssize_t ldk, int nk,
                 float *St, int lds)
    void qk_cols(const float *Qt, int Rp, int D, const float *K, Py_ssize_t ldk, int nk, float *St)
    void pv_rows(const float *St, int lds, int R, const float *V, Py_ssize_t ldv, int nk,
                 float *O, int D, float *Vb)
    enum: PV_PACK
    void softmax_cols(float *St, int Rp, int nk, int c0, const int *nvis, float *m, float *l,
                      float *alpha)

cdef enum:
    # Most keys per work item of one-query (decode) attention (docs/design-notes.md#decode-attention):
    # the blocks depend on the length only, so results not on the thread count; 128 keys x 8 KV
    # heads x 128 dims: 512 KiB.
    DECODE_KEYS = 128
    # Rows of one work item (query block x group heads): 32 fills the 2-vector register tile.
    ROWS = 32
    # Below this many rows the transposed (row-vectorised) tile wastes more than it saves: decode.
    MIN_COLS_ROWS = 16


cdef inline Py_ssize_t _visible(Py_ssize_t t, Py_ssize_t q_start, Py_ssize_t k_start,
                                Py_ssize_t S) noexcept nogil:
    """Number of keys query t sees: clamp(q_start + t - k_start + 1, 0, S)."""
    cdef Py_ssize_t n = q_start + t - k_start + 1
    return 0 if n < 0 else (S if n > S else n)


cdef void _attend_item(const float *q, const float *k, const float *v, float *out,
                       float *m_out, float *l_out,
                       Py_ssize_t T, Py_ssize_t S, int H, int Hkv, int D,
                       Py_ssize_t q_start, Py_ssize_t k_start, float scale, bint online, int block,
                       int BQ, Py_ssize_t item, float *qs, float *acc, float *St, float *mrow,
                       float *lrow, float *alpha, int *nvis, float *Vb) noexcept nogil:
    """One (KV head g, query block) of attention; rows r = (t - t0) * G + j are query heads g*G + j."""
    cdef int G = H // Hkv
    cdef Py_ssize_t nqb = (T + BQ - 1) // BQ
    cdef int g = <int>(item // nqb)
    cdef Py_ssize_t t0 = (item % nqb) * BQ
    cdef Py_ssize_t t1 = t0 + BQ if t0 + BQ < T else T
    cdef int R = <int>(t1 - t0) * G
    cdef bint cols = R >= MIN_COLS_ROWS
    # Rows padded to whole vectors; pad rows see no key, so they stay 0 and are never written.
    cdef int Rp = ((R + ROWS - 1) // ROWS) * ROWS if cols else ((R + 15) // 16) * 16
    cdef Py_ssize_t kend = _visible(t1 - 1, q_start, k_start, S)
    cdef Py_ssize_t ldk = <Py_ssize_t>Hkv * D
    cdef Py_ssize_t c0
    cdef int r, i, nk
    cdef const float *qrow
    cdef float *orow
    cdef float inv, a

    # Q block scaled once, row-major for few rows, transposed (D, Rp) with zero pad rows otherwise.
    if cols:
        memset(qs, 0, <size_t>D * Rp * sizeof(float))
    for r in range(R):
        qrow = q + ((t0 + r // G) * H + g * G + r % G) * D
        if cols:
            for i in range(D):
                qs[i * Rp + r] = qrow[i] * scale
        else:
            for i in range(D):
                qs[r * D + i] = qrow[i] * scale
    memset(acc, 0, <size_t>R * D * sizeof(float))
    for r in range(Rp):
        mrow[r] = -INFINITY
        lrow[r] = 0.0
        nvis[r] = <int>_visible(t0 + r // G, q_start, k_start, S) if r < R else 0

    # online: stream over key blocks, the (block, Rp) score tile is all the extra memory.
    # standard: one "block" holding every visible key's score (kend, Rp), this item's part of the
    # whole score tensor: materialise, mask, softmax.
    if not online:
        block = <int>kend
    c0 = 0
    while c0 < kend:
        nk = <int>(block if c0 + block <= kend else kend - c0)
        if cols:
            qk_cols(qs, Rp, D, k + (c0 * Hkv + g) * D, ldk, nk, St)
        else:
            qk_rows(qs, R, D, k + (c0 * Hkv + g) * D, ldk, nk, St, Rp)
        softmax_cols(St, Rp, nk, <int>c0, nvis, mrow, lrow, alpha)
        for r in range(R):
            a = alpha[r]    # a local, so the loop below vectorises (acc may alias alpha)
            if a != 1.0:
                for i in range(D):
                    acc[r * D + i] *= a
        pv_rows(St, Rp, R, v + (c0 * Hkv + g) * D, ldk, nk, acc, D, Vb)
        c0 += block

    for r in range(R):
        orow = out + ((t0 + r // G) * H + g * G + r % G) * D
        inv = 1.0 / lrow[r] if lrow[r] > 0.0 else 0.0
        for i in range(D):
            orow[i] = acc[r * D + i] * inv
        if m_out != NULL:
            m_out[(t0 + r // G) * H + g * G + r % G] = mrow[r]
            l_out[(t0 + r // G) * H + g * G + r % G] = lrow[r]


cdef inline Py_ssize_t _block_queries(Py_ssize_t H, Py_ssize_t Hkv) noexcept nogil:
    """BQ: queries per work item, so that BQ * G rows fill the ROWS-row register tile."""
    cdef Py_ssize_t G = H // Hkv
    return ROWS // G if G < ROWS else 1


cdef inline Py_ssize_t _padded_rows(Py_ssize_t H, Py_ssize_t Hkv) noexcept nogil:
    return ((_block_queries(H, Hkv) * (H // Hkv) + ROWS - 1) // ROWS) * ROWS


cdef inline Py_ssize_t _decode_blocks(Py_ssize_t kend) noexcept nogil:
    """Blocks of one query's kend keys: an even number (two threads take equal halves) of equal
    blocks of at most DECODE_KEYS keys, by the length alone (the same bits for any thread count).
    Blocks of DECODE_KEYS with a ragged last one left a thread 128 keys and the other 32 at 160."""
    if kend < 2:
        return 1
    return 2 * ((kend + 2 * DECODE_KEYS - 1) // (2 * DECODE_KEYS))


cdef Py_ssize_t _decode_work(Py_ssize_t kend, int H, int D, int n, bint online) noexcept nogil:
    """Floats of _attention_decode's scratch for kend keys on n threads: the blocks' partials
    (o_b, m_b, l_b per head) and, online, one block of scores per thread (standard's (H, kend)
    scores are the caller's)."""
    return _decode_blocks(kend) * (<Py_ssize_t>H * D + 2 * H) + (n * H * DECODE_KEYS if online else 0)


cdef inline int _block_len(Py_ssize_t b, Py_ssize_t bs, Py_ssize_t kend) noexcept nogil:
    return <int>(bs if (b + 1) * bs <= kend else max(0, kend - b * bs))


cdef void _attention_decode(const float *q, const float *k, const float *v, float *out,
                            float *m_out, float *l_out, Py_ssize_t kend, int H, int Hkv, int D,
                            float scale, bint online, float *scores, float *work,
                            int n) noexcept nogil:
    """One query against its kend visible keys, over blocks of DECODE_KEYS keys (all heads).

    online: per block, the scores' max m_b, sum l_b and unnormalised output o_b per head, merged
    in block order: out = sum_b o_b e^(m_b - M) / L, M = max_b m_b, L = sum_b l_b e^(m_b - M).
    standard: the (H, kend) scores in `scores`, one softmax per head over all of them, then the
    blocks' P V partials summed in block order. work: _decode_work(kend, H, D, n, online)
    floats, the caller's (the decode step allocates nothing per call).
    """
    cdef Py_ssize_t nb = _decode_blocks(kend), bs = (kend + nb - 1) // nb, b
    cdef Py_ssize_t per = <Py_ssize_t>H * D + 2 * H   # o_b (H, D), m_b (H), l_b (H)
    cdef float *parts = work
    cdef float *p
    if nb < 2:
        n = 1
    if online:
        if n == 1:   # in order on this thread: no OpenMP team (ext/decode.pyx's reason), same bits
            for b in range(nb):
                _decode_block(q, k, v, H, Hkv, D, b * bs, _block_len(b, bs, kend), scale,
                              work + nb * per, parts + b * per)
        else:
            with nogil, parallel(num_threads=n):
                p = work + nb * per + omp_get_thread_num() * H * DECODE_KEYS   # this thread's scores
                for b in prange(nb, schedule="static"):
                    _decode_block(q, k, v, H, Hkv, D, b * bs, _block_len(b, bs, kend), scale, p,
                                  parts + b * per)
    else:
        if n == 1:
            for b in range(nb):
                decode_scores(q, k, H, Hkv, D, b * bs, _block_len(b, bs, kend), scale,
                              scores + b * bs, kend)
        else:
            with nogil, parallel(num_threads=n):
                for b in prange(nb, schedule="static"):
                    decode_scores(q, k, H, Hkv, D, b * bs, _block_len(b, bs, kend), scale,
                                  scores + b * bs, kend)
        # The whole row's softmax, H x kend exponentials: microseconds. Its m, l go to block 0.
        softmax_rows(scores, H, <int>kend, kend, parts + H * D, parts + H * D + H)
        if n == 1:
            for b in range(nb):
                decode_pv(scores + b * bs, kend, v, H, Hkv, D, b * bs, _block_len(b, bs, kend),
                          parts + b * per)
        else:
            with nogil, parallel(num_threads=n):
                for b in prange(nb, schedule="static"):
                    decode_pv(scores + b * bs, kend, v, H, Hkv, D, b * bs,
                              _block_len(b, bs, kend), parts + b * per)
    merge_blocks(parts, nb, per, H, D, online, out, m_out, l_out)


cdef inline void _decode_block(const float *q, const float *k, const float *v, int H, int Hkv,
                               int D, Py_ssize_t c0, int nk, float scale, float *p,
                               float *part) noexcept nogil:
    """online: one block's scores in p (H, DECODE_KEYS), then its m_b, l_b and o_b in part."""
    decode_scores(q, k, H, Hkv, D, c0, nk, scale, p, DECODE_KEYS)
    softmax_rows(p, H, nk, DECODE_KEYS, part + H * D, part + H * D + H)
    decode_pv(p, DECODE_KEYS, v, H, Hkv, D, c0, nk, part)


def scratch_floats(algo, Py_ssize_t T, Py_ssize_t H, Py_ssize_t Hkv, Py_ssize_t D, Py_ssize_t S,
                   int block=64, int num_threads=1):
    """Floats of working memory one attention call holds beyond q, k, v and out, all threads
    together (what the algorithms differ in): standard's score tensor plus per-thread tiles,
    online_softmax's per-thread tiles only. Mirrors the allocations of the kernels below."""
    if T <= 0 or H <= 0 or Hkv <= 0 or S <= 0 or H % Hkv:
        return 0
    online = algo == "online_softmax"
    if T == 1:   # decode: per-block partials; online: a block of scores per thread; standard: (H, S)
        return _decode_work(S, H, D, num_threads, online) + (0 if online else H * S)
    Rp = _padded_rows(H, Hkv)
    tile = 2 * Rp * D + 4 * Rp + PV_PACK * D   # Q tile, accumulator, row stats, packed V
    if online:
        return num_threads * (tile + min(block, S) * Rp)
    return num_threads * (tile + Rp) + standard_scores_size(T, H, Hkv, S)


def standard_scores_size(Py_ssize_t T, Py_ssize_t H, Py_ssize_t Hkv, Py_ssize_t S):
    """Floats of the standard algorithm's score tensor for T queries of H heads over S keys:
    (work items) x (padded rows per item) x S, about H x T x S."""
    if T <= 0 or H <= 0 or Hkv <= 0 or S <= 0 or H % Hkv:
        return 0
    cdef Py_ssize_t nitems = Hkv * ((T + _block_queries(H, Hkv) - 1) // _block_queries(H, Hkv))
    return nitems * _padded_rows(H, Hkv) * S


cdef int _attention(const float[:, :, ::1] q, const float[:, :, ::1] k, const float[:, :, ::1] v,
                    float[:, :, ::1] out, float *m_out, float *l_out,
                    Py_ssize_t q_start, Py_ssize_t k_start, float scale, bint online, int block,
                    float *scores, int n) noexcept nogil:
    """out[t,h] = softmax_s(q[t,h].k[s,h//G] * scale, s: k_start+s <= q_start+t) @ v[:, h//G].

    scores: standard only, standard_scores_size(T, H, Hkv, S) floats, or NULL to allocate them.
    Returns the number of work items skipped for want of scratch memory (0 on success).
    """
    cdef Py_ssize_t T = q.shape[0], S = k.shape[0]
    cdef int H = <int>q.shape[1], Hkv = <int>k.shape[1], D = <int>q.shape[2]
    cdef int BQ = <int>_block_queries(H, Hkv)
    cdef int Rp = <int>_padded_rows(H, Hkv)
    cdef Py_ssize_t nitems = Hkv * ((T + BQ - 1) // BQ)
    cdef Py_ssize_t ncols = block if block < S else S
    cdef Py_ssize_t item
    cdef float *owned = NULL
    cdef float *qs = NULL
    cdef float *acc = NULL
    cdef float *St = NULL
    cdef float *mrow = NULL
    cdef int *nvis = NULL
    cdef float *Vb = NULL
    cdef int skipped = 0
    if not online and scores == NULL:
        owned = <float *>malloc(<size_t>nitems * Rp * S * sizeof(float))
        if owned == NULL:
            return <int>nitems
        scores = owned
    with nogil, parallel(num_threads=n):
        # Thread-local scratch: Q tile, output accumulator, score tile (online; standard's are
        # slices of `scores`), row max / sum / rescale, visible key count per row, packed V rows.
        qs = <float *>malloc(<size_t>Rp * D * sizeof(float))
        acc = <float *>malloc(<size_t>Rp * D * sizeof(float))
        St = <float *>malloc(<size_t>(ncols if online else 1) * Rp * sizeof(float))
        mrow = <float *>malloc(<size_t>3 * Rp * sizeof(float))
        nvis = <int *>malloc(<size_t>Rp * sizeof(int))
        Vb = <float *>malloc(<size_t>PV_PACK * D * sizeof(float))
        # chunksize 1 interleaves cheap (early) and expensive (late) causal query blocks.
        for item in prange(nitems, schedule="static", chunksize=1):
            if qs == NULL or acc == NULL or St == NULL or mrow == NULL or nvis == NULL or Vb == NULL:
                skipped += 1
            else:
                _attend_item(&q[0, 0, 0], &k[0, 0, 0], &v[0, 0, 0], &out[0, 0, 0], m_out, l_out,
                             T, S, H, Hkv, D, q_start, k_start, scale, online, block, BQ, item,
                             qs, acc, St if online else scores + item * Rp * S,
                             mrow, mrow + Rp, mrow + 2 * Rp, nvis, Vb)
        free(qs)
        free(acc)
        free(St)
        free(mrow)
        free(nvis)
        free(Vb)
    free(owned)
    return skipped


def attention(const float[:, :, ::1] q, const float[:, :, ::1] k, const float[:, :, ::1] v,
              float[:, :, ::1] out, Py_ssize_t q_start, Py_ssize_t k_start, float scale,
              algo="online_softmax", int block=64, float[:, ::1] m=None, float[:, ::1] l=None,
              int num_threads=1, float[::1] scores=None):
    """out = softmax(q k^T * scale + causal mask) v, per query head h against KV head h // (H // Hkv).

    q (T, H, D), k/v (S, Hkv, D), out (T, H, D); query t sits at absolute position q_start + t and
    sees key s iff k_start + s <= q_start + t. m, l (T, H), if given, receive the row max of the
    scaled scores and the row sum of exp(score - m); a row with no visible key gets out 0, m -inf, l 0.
    scores: for `standard`, a workspace of at least standard_scores_size(T, H, Hkv, S) floats for
    the score tensor (allocated per call when None); `online_softmax` does not use it.
    """
    cdef bint online
    cdef float *mp = NULL
    cdef float *lp = NULL
    cdef float *sp = NULL
    if algo == "online_softmax":
        online = True
    elif algo == "standard":
        online = False
    else:
        raise ValueError(f"unknown attention algo {algo!r}; expected 'standard' or 'online_softmax'")
    T, H, D = q.shape[0], q.shape[1], q.shape[2]
    S, Hkv = k.shape[0], k.shape[1]
    if k.shape[2] != D or (v.shape[0], v.shape[1], v.shape[2]) != (S, Hkv, D) or (out.shape[0], out.shape[1], out.shape[2]) != (T, H, D):
        raise ValueError(f"attention shapes: q {(q.shape[0], q.shape[1], q.shape[2])}, k {(k.shape[0], k.shape[1], k.shape[2])}, "
                         f"v {(v.shape[0], v.shape[1], v.shape[2])}, out {(out.shape[0], out.shape[1], out.shape[2])}")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"query heads {H} must be a multiple of KV heads {Hkv}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if (m is None) != (l is None):
        raise ValueError("pass both m and l, or neither")
    if m is not None:
        if (m.shape[0], m.shape[1]) != (T, H) or (l.shape[0], l.shape[1]) != (T, H):
            raise ValueError(f"m and l must have shape {(T, H)}")
        if T > 0:
            mp = &m[0, 0]
            lp = &l[0, 0]
    if T == 0 or H == 0 or D == 0:
        return
    kend = _visible(0, q_start, k_start, S) if T == 1 else S
    if kend == 0:
        # No visible keys: every row is empty.
        out[:, :, :] = 0.0
        if mp != NULL:
            m[:, :] = -INFINITY
            l[:, :] = 0.0
        return
    if T == 1:
        _decode(&q[0, 0, 0], &k[0, 0, 0], &v[0, 0, 0], &out[0, 0, 0], mp, lp, kend, H, Hkv, D,
                scale, online, scores, num_threads)
        return
    if scores is not None and not online:
        need = standard_scores_size(T, H, Hkv, S)
        if scores.shape[0] < need:
            raise ValueError(f"scores workspace has {scores.shape[0]} floats, standard attention "
                             f"needs {need} (standard_scores_size)")
        sp = &scores[0]
    if _attention(q, k, v, out, mp, lp, q_start, k_start, scale, online, block, sp, num_threads):
        raise MemoryError(f"attention: no memory for the scratch ({algo}, T={T}, S={S}, "
                          f"block={block})")


cdef void _decode(const float *q, const float *k, const float *v, float *out, float *mp,
                  float *lp, Py_ssize_t kend, int H, int Hkv, int D, float scale, bint online,
                  float[::1] scores, int n):
    """_attention_decode with its scratch from ext.linear.scratch, kept across calls: the per-op
    decode runs once per layer per step (the sequence strategy; the decode stack holds its own).
    standard's scores in `scores` where it has H * kend floats."""
    cdef Py_ssize_t need = _decode_work(kend, H, D, n, online)
    cdef Py_ssize_t nsc = 0 if online or (scores is not None and scores.shape[0] >= H * kend) else H * kend
    cdef float[::1] buf = scratch(need + nsc, "decode_attention")
    cdef float *work = &buf[0]
    cdef float *sp = work + need
    if not online and nsc == 0:
        sp = &scores[0]
    with nogil:
        _attention_decode(q, k, v, out, mp, lp, kend, H, Hkv, D, scale, online, sp, work, n)


cdef void _merge(const float[:, :, :, ::1] o_parts, const float[:, :, ::1] m_parts,
                 const float[:, :, ::1] l_parts, float[:, :, ::1] out, float *m_out, float *l_out,
                 int n) noexcept nogil:
    """out = sum_r o_r l_r e^(m_r - m) / L with m = max_r m_r, L = sum_r l_r e^(m_r - m)."""
    cdef Py_ssize_t P = o_parts.shape[0], T = o_parts.shape[1], H = o_parts.shape[2]
    cdef Py_ssize_t D = o_parts.shape[3]
    cdef Py_ssize_t row, t, h, r, i
    cdef float mx, L, w
    with nogil, parallel(num_threads=n):
        for row in prange(T * H, schedule="static"):
            t = row // H
            h = row % H
            mx = -INFINITY
            for r in range(P):
                if l_parts[r, t, h] > 0.0 and m_parts[r, t, h] > mx:
                    mx = m_parts[r, t, h]
            L = 0.0
            for i in range(D):
                out[t, h, i] = 0.0
            for r in range(P):
                if l_parts[r, t, h] > 0.0:
                    w = l_parts[r, t, h] * expf(m_parts[r, t, h] - mx)
                    L = L + w
                    for i in range(D):
                        out[t, h, i] += w * o_parts[r, t, h, i]
            if L > 0.0:
                w = 1.0 / L
                for i in range(D):
                    out[t, h, i] *= w
            else:
                mx = -INFINITY
            if m_out != NULL:
                m_out[row] = mx
                l_out[row] = L


def merge(const float[:, :, :, ::1] o_parts, const float[:, :, ::1] m_parts,
          const float[:, :, ::1] l_parts, float[:, :, ::1] out,
          float[:, ::1] m_out=None, float[:, ::1] l_out=None, int num_threads=1):
    """out = sum_r o_r l_r e^(m_r - m) / L, m = max_r m_r, L = sum_r l_r e^(m_r - m) (parts with l = 0 skipped).

    o_parts (R, T, H, D) normalised partials over disjoint key ranges, m/l_parts (R, T, H);
    m_out, l_out (T, H), if given, receive the merged m and L.
    """
    cdef float *mp = NULL
    cdef float *lp = NULL
    P, T, H, D = o_parts.shape[0], o_parts.shape[1], o_parts.shape[2], o_parts.shape[3]
    if ((m_parts.shape[0], m_parts.shape[1], m_parts.shape[2]) != (P, T, H) or (l_parts.shape[0], l_parts.shape[1], l_parts.shape[2]) != (P, T, H)
            or (out.shape[0], out.shape[1], out.shape[2]) != (T, H, D)):
        raise ValueError(f"merge shapes: o_parts {(o_parts.shape[0], o_parts.shape[1], o_parts.shape[2], o_parts.shape[3])}, m_parts "
                         f"{(m_parts.shape[0], m_parts.shape[1], m_parts.shape[2])}, l_parts {(l_parts.shape[0], l_parts.shape[1], l_parts.shape[2])}, "
                         f"out {(out.shape[0], out.shape[1], out.shape[2])}")
    if (m_out is None) != (l_out is None):
        raise ValueError("pass both m_out and l_out, or neither")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if m_out is not None:
        if (m_out.shape[0], m_out.shape[1]) != (T, H) or (l_out.shape[0], l_out.shape[1]) != (T, H):
            raise ValueError(f"m_out and l_out must have shape {(T, H)}")
        if T * H > 0:
            mp = &m_out[0, 0]
            lp = &l_out[0, 0]
    if T * H == 0:
        return
    _merge(o_parts, m_parts, l_parts, out, mp, lp, num_threads)
