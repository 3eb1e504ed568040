/* The attention kernels' C tiles (QK^T, softmax, PV), included by ext/attention.pyx:
   plain C so that the compiler vectorises the inner loops for the CPU that builds them. */
#ifndef QWEN3_ATTENTION_TILES_H
#define QWEN3_ATTENTION_TILES_H

#define PF_ROWS 8    /* prefetch distance in K/V rows for the strided (page-per-row) reads */
/* Decode reads whole K/V rows (all heads of a key, 4 KiB for the 0.6B) in order; prefetched 4 rows
   ahead into L2 (ext/simd.pxd's prefetch_floats_l2): decode attention x0.93 of its time on an Intel
   Xeon (into L1 x0.95, 8-16 rows no better; not measured on AMD; docs/design-notes.md#int8-step-split).
   A prefetch changes no arithmetic. */
#define DECODE_PF_ROWS 4

/* St[c*lds + r] = Q[r] . K[c] for r < R, c < nk; Q row-major (R, D). Few rows (decode). */
static void qk_rows(const float *Q, int R, int D, const float *K, Py_ssize_t ldk, int nk,
                    float *St, int lds) {
    for (int c = 0; c < nk; c++) {
        const float *k = K + c * ldk;
        prefetch_floats(k + PF_ROWS * ldk, D);
        for (int r = 0; r < R; r++) {
            const float *q = Q + (Py_ssize_t)r * D;
            float s;
            int i = 0;
            if (D % VL == 0) {
                vf a = {0}, b = {0};
                for (; i + 2 * VL <= D; i += 2 * VL) {
                    a += vld(q + i) * vld(k + i);
                    b += vld(q + i + VL) * vld(k + i + VL);
                }
                for (; i < D; i += VL) a += vld(q + i) * vld(k + i);
                s = hsumv(a + b);
            } else {
                s = 0.f;
                for (; i < D; i++) s += q[i] * k[i];
            }
            St[(Py_ssize_t)c * lds + r] = s;
        }
    }
}

/* St[c*Rp + r] = sum_i Qt[i*Rp + r] K[c, i] for rows r0 .. r0 + 2 VL - 1 and keys c .. c + NK - 1:
   a register tile of 2 vectors of rows x NK keys (NK constant), no horizontal sums. */
static inline __attribute__((always_inline)) void qk_tile(
        const float *Qt, int Rp, int D, const float *K, Py_ssize_t ldk, int c, int r0,
        float *St, const int NK) {
    vf a[4], b[4];
    const float *k[4];
    for (int j = 0; j < NK; j++) {
        a[j] = (vf){0};
        b[j] = (vf){0};
        k[j] = K + (Py_ssize_t)(c + j) * ldk;
    }
    const float *qt = Qt + r0;
    for (int i = 0; i < D; i++, qt += Rp) {
        vf qa = vld(qt), qb = vld(qt + VL);
        IN_REG(qa);
        IN_REG(qb);
        for (int j = 0; j < NK; j++) {
            float x = k[j][i];
            a[j] += qa * x;
            b[j] += qb * x;
        }
    }
    float *s = St + (Py_ssize_t)c * Rp + r0;
    for (int j = 0; j < NK; j++) { vst(s + j * Rp, a[j]); vst(s + j * Rp + VL, b[j]); }
}

/* St[c*Rp + r] = sum_i Qt[i*Rp + r] K[c, i] for r < Rp (a multiple of 2 VL), c < nk:
   tiles of 4 keys, 8 accumulators. */
static __attribute__((noinline))   /* own register allocation, away from the caller's */
void qk_cols(const float *Qt, int Rp, int D, const float *K, Py_ssize_t ldk, int nk, float *St) {
    for (int r0 = 0; r0 < Rp; r0 += 2 * VL) {
        int c = 0;
        for (; c + 4 <= nk; c += 4) qk_tile(Qt, Rp, D, K, ldk, c, r0, St, 4);
        for (; c < nk; c++) qk_tile(Qt, Rp, D, K, ldk, c, r0, St, 1);
    }
}

/* O[r, i0 .. i0 + VL*NV] += sum_c P[c*cs + r*rs] V[c, i0 ..] for rows r < nrow (1 or 2), O rows
   D floats apart: the 2 x VL*NV block of O stays in registers over the key loop, loaded and
   stored once, and the tile reads VL*NV contiguous floats of each V row (all of a 128-wide row
   with AVX-512; a quarter with AVX2, so pv_direct passes over the keys D / (VL*PV_NV) times).
   P is key-major (cs = lds, rs = 1) in prefill, head-major (cs = 1, rs = lds) in decode. */
static inline __attribute__((always_inline)) void pv_tile(
        const float *P, Py_ssize_t cs, Py_ssize_t rs, int nrow, const float *V, Py_ssize_t ldv,
        int nk, float *O, int D, int i0, const int NV, const int pf) {
    vf a[8], b[8];
    float *o0 = O + i0, *o1 = o0 + D;
    for (int j = 0; j < NV; j++) { a[j] = vld(o0 + VL * j); b[j] = nrow > 1 ? vld(o1 + VL * j) : a[j]; }
    for (int c = 0; c < nk; c++) {
        const float *v = V + c * ldv + i0;
        if (pf) prefetch_floats(v + PF_ROWS * ldv, VL * NV);
        float p0 = P[c * cs], p1 = P[c * cs + rs * (nrow > 1)];
        for (int j = 0; j < NV; j++) {
            vf x = vld(v + VL * j);
            IN_REG(x);
            a[j] += x * p0;
            b[j] += x * p1;
        }
    }
    for (int j = 0; j < NV; j++) { vst(o0 + VL * j, a[j]); if (nrow > 1) vst(o1 + VL * j, b[j]); }
}

/* Vectors per row of a pv tile: its 2 x PV_NV accumulators fill half the vector registers
   (32 with AVX-512, 16 otherwise); more would spill. */
#define PV_NV (VL == 16 ? 8 : 4)

/* O[r, :] += sum_c St[c*lds + r] V[c, :] for r < R, c < nk, V rows ldv floats apart. */
static void pv_direct(const float *St, int lds, int R, const float *V, Py_ssize_t ldv, int nk,
                      float *O, int D, const int pf) {
    for (int i0 = 0; i0 < D; i0 += VL * PV_NV) {
        int nv = (D - i0 >= VL * PV_NV ? VL * PV_NV : D - i0) / VL;
        for (int r = 0; r < R; r += 2) {
            int nrow = R - r >= 2 ? 2 : 1;
            const float *P = St + r;
            float *Or = O + (Py_ssize_t)r * D;
            switch (nv) {   /* constant NV: the tile is unrolled and kept in registers */
                case 8: pv_tile(P, lds, 1, nrow, V, ldv, nk, Or, D, i0, 8, pf); break;
                case 4: pv_tile(P, lds, 1, nrow, V, ldv, nk, Or, D, i0, 4, pf); break;
                case 2: pv_tile(P, lds, 1, nrow, V, ldv, nk, Or, D, i0, 2, pf); break;
                case 1: pv_tile(P, lds, 1, nrow, V, ldv, nk, Or, D, i0, 1, pf); break;
                default:
                    for (int k = 0; k < nv; k++)
                        pv_tile(P, lds, 1, nrow, V, ldv, nk, Or, D, i0 + VL * k, 1, pf);
            }
        }
    }
}

#define PV_PACK 64
/* O[r, :] += sum_c St[c*lds + r] V[c, :] for r < R, c < nk; O row-major (R, D).
   Vb: scratch of PV_PACK * D floats. V rows are Hkv*D floats apart (4 KiB for Qwen3-0.6B), so
   a block of them maps onto a handful of L1 sets and is evicted between the row tiles that
   reuse it; packing PV_PACK rows contiguously keeps the block in L1 for all R/2 row tiles. */
static void pv_rows(const float *St, int lds, int R, const float *V, Py_ssize_t ldv, int nk,
                    float *O, int D, float *Vb) {
    if (D % VL) {
        for (int r = 0; r < R; r++)
            for (int c = 0; c < nk; c++) {
                float p = St[(Py_ssize_t)c * lds + r];
                const float *v = V + c * ldv;
                float *o = O + (Py_ssize_t)r * D;
                for (int i = 0; i < D; i++) o[i] += p * v[i];
            }
        return;
    }
    if (R <= 2) {   /* one row tile: every V row is read once anyway */
        pv_direct(St, lds, R, V, ldv, nk, O, D, 1);
        return;
    }
    for (int c0 = 0; c0 < nk; c0 += PV_PACK) {
        int n = nk - c0 < PV_PACK ? nk - c0 : PV_PACK;
        for (int c = 0; c < n; c++)
            memcpy(Vb + (Py_ssize_t)c * D, V + (c0 + c) * ldv, (size_t)D * sizeof(float));
        for (int c = 0; c < n && c0 + n + c < nk; c++)   /* the next pack's rows */
            prefetch_floats(V + (c0 + n + c) * ldv, D);
        pv_direct(St + (Py_ssize_t)c0 * lds, lds, R, Vb, D, n, O, D, 0);
    }
}

/* Online-softmax step for rows r < Rp (a multiple of VL) over key columns c < nk, keys
   c0 + c, visible to row r iff c0 + c < nvis[r]:
   m' = max(m, max_c St), alpha = e^(m - m'), St <- e^(St - m') (0 if masked),
   l <- l alpha + sum_c St, m <- m'. Vectorised over rows (St is key-major). */
static void softmax_cols(float *St, int Rp, int nk, int c0, const int *nvis,
                         float *m, float *l, float *alpha) {
    const vf ninf = (vf){0} - __builtin_inff(), zero = {0};
    for (int r0 = 0; r0 < Rp; r0 += VL) {
        vi lim = vldi(nvis + r0) - c0;
        vf bm = ninf;
        for (int c = 0; c < nk; c++) {
            vi vis = ((vi){0} + c) < lim;
            bm = maxv(bm, selv(vis, vld(St + (Py_ssize_t)c * Rp + r0), ninf));
        }
        vf mold = vld(m + r0), mnew = maxv(mold, bm);
        vf shift = selv(mnew > ninf, mnew, zero);   /* no key yet: avoid -inf - -inf */
        vf sum = zero;
        for (int c = 0; c < nk; c++) {
            vi vis = ((vi){0} + c) < lim;
            float *s = St + (Py_ssize_t)c * Rp + r0;
            vf p = selv(vis, expv(vld(s) - shift), zero);
            vst(s, p);
            sum += p;
        }
        vf a = expv(mold - shift);
        vst(alpha + r0, a);
        vst(l + r0, vld(l + r0) * a + sum);
        vst(m + r0, mnew);
    }
}

static inline float dot_f32(const float *a, const float *b, int n) {
    vf x = {0}, y = {0};
    int i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        x += vld(a + i) * vld(b + i);
        y += vld(a + i + VL) * vld(b + i + VL);
    }
    for (; i + VL <= n; i += VL) x += vld(a + i) * vld(b + i);
    float s = hsumv(x + y);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* s[h*lds + c] = scale * q[h] . K[c0 + c, h / G] for h < H, c < nk: the keys of all heads,
   row after row, in memory order. */
static void decode_scores(const float *q, const float *K, int H, int Hkv, int D,
                          Py_ssize_t c0, int nk, float scale, float *s, Py_ssize_t lds) {
    int G = H / Hkv;
    Py_ssize_t ld = (Py_ssize_t)Hkv * D;
    for (int c = 0; c < nk; c++) {
        const float *krow = K + (c0 + c) * ld;
        prefetch_floats_l2(krow + DECODE_PF_ROWS * ld, (int)ld);
        for (int h = 0; h < H; h++)
            s[h * lds + c] = scale * dot_f32(q + (Py_ssize_t)h * D, krow + (Py_ssize_t)(h / G) * D, D);
    }
}

/* Per row h < H of nk scores: m[h] = max, s <- e^(s - m[h]), l[h] = sum of the new s. */
static void softmax_rows(float *s, int H, int nk, Py_ssize_t lds, float *m, float *l) {
    for (int h = 0; h < H; h++) {
        float *row = s + h * lds;
        float mx = -__builtin_inff();
        for (int c = 0; c < nk; c++) mx = row[c] > mx ? row[c] : mx;
        vf acc = {0};
        int c = 0;
        for (; c + VL <= nk; c += VL) {
            vf p = expv(vld(row + c) - mx);
            vst(row + c, p);
            acc += p;
        }
        float sum = hsumv(acc);
        for (; c < nk; c++) { row[c] = expf(row[c] - mx); sum += row[c]; }
        m[h] = mx;
        l[h] = sum;
    }
}

/* Keys per P V tile: a pair of heads' output is loaded and stored once per 8 keys, not per key
   (each V piece is still read once: the pair shares it); x0.56 of the time per key in L2, x0.84
   from DRAM on an Intel Xeon (docs/design-notes.md#decode-pv). */
#define DECODE_PV_KEYS 8

static inline __attribute__((always_inline)) void decode_pv_d(
        const float *s, Py_ssize_t lds, const float *V, int H, int Hkv, int D,
        Py_ssize_t c0, int nk, float *o) {
    int G = H / Hkv;
    Py_ssize_t ld = (Py_ssize_t)Hkv * D;
    memset(o, 0, (size_t)H * D * sizeof(float));
    for (int c = 0; c < nk; c += DECODE_PV_KEYS) {
        int n = nk - c < DECODE_PV_KEYS ? nk - c : DECODE_PV_KEYS;
        const float *rows = V + (c0 + c) * ld;
        for (int j = 0; j < n; j++)
            prefetch_floats_l2(rows + (DECODE_PF_ROWS + j) * ld, (int)ld);
        for (int h = 0; h < H;) {
            int nrow = h + 1 < H && (h + 1) / G == h / G ? 2 : 1;   /* two heads of one KV head */
            const float *vg = rows + (Py_ssize_t)(h / G) * D, *sh = s + h * lds + c;
            float *oh = o + (Py_ssize_t)h * D;
            int i0 = 0;
            for (; i0 + VL * PV_NV <= D; i0 += VL * PV_NV)
                pv_tile(sh, 1, lds, nrow, vg, ld, n, oh, D, i0, PV_NV, 0);
            for (; i0 + VL <= D; i0 += VL)
                pv_tile(sh, 1, lds, nrow, vg, ld, n, oh, D, i0, 1, 0);
            for (int r = 0; r < nrow; r++)
                for (int i = i0; i < D; i++)
                    for (int k = 0; k < n; k++)
                        oh[r * D + i] += vg[k * ld + i] * sh[r * lds + k];
            h += nrow;
        }
    }
}

/* o[h] = sum_c s[h*lds + c] V[c0 + c, h / G] for h < H, c < nk (o is overwritten); each element
   the same fused multiply-adds in key order as one key at a time, so the same bits. */
static void decode_pv(const float *s, Py_ssize_t lds, const float *V, int H, int Hkv, int D,
                      Py_ssize_t c0, int nk, float *o) {
    if (D == 128)   /* Qwen3's head_dim: the tile's loops unrolled at a constant width */
        decode_pv_d(s, lds, V, H, Hkv, 128, c0, nk, o);
    else
        decode_pv_d(s, lds, V, H, Hkv, D, c0, nk, o);
}

/* out[h] = (sum_b w_b o_b[h]) / L in block order, for the nb blocks' partials of one query (each
   per floats: o_b (H, D), m_b (H), l_b (H)). online: w_b = e^(m_b - M), M = max_b m_b,
   L = sum_b l_b e^(m_b - M); standard: one block's m, l, and w_b = 1. m_out, l_out: M, L, or NULL. */
static void merge_blocks(const float *parts, Py_ssize_t nb, Py_ssize_t per, int H, int D,
                         int online, float *out, float *m_out, float *l_out) {
    const float *m = parts + (Py_ssize_t)H * D, *l = m + H;
    for (int h = 0; h < H; h++) {
        float M = m[h], L = l[h];
        if (online) {
            M = -__builtin_inff();
            for (Py_ssize_t b = 0; b < nb; b++) M = m[b * per + h] > M ? m[b * per + h] : M;
            L = 0.f;
            for (Py_ssize_t b = 0; b < nb; b++) L = L + l[b * per + h] * expf(m[b * per + h] - M);
        }
        float inv = (float)(1.0 / L), *o = out + (Py_ssize_t)h * D;
        memset(o, 0, (size_t)D * sizeof(float));
        for (Py_ssize_t b = 0; b < nb; b++) {
            const float *ob = parts + b * per + (Py_ssize_t)h * D;
            float w = inv * (online ? expf(m[b * per + h] - M) : 1.f);
            int i = 0;
            for (; i + VL <= D; i += VL) vst(o + i, vld(o + i) + vld(ob + i) * w);
            for (; i < D; i++) o[i] += ob[i] * w;
        }
        if (m_out) { m_out[h] = M; l_out[h] = L; }
    }
}

#endif
