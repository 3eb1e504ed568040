"""ext/ kernels against NumPy float64 references written here, independently of the kernels.

Tolerance: the kernels compute in float32 (24-bit mantissa) over sums of up to a few thousand
terms; 1e-5 relative to the output's scale leaves about 100 ulp of headroom for that rounding
while catching any real mistake (a wrong mask, head mapping or rescale is off by O(1)).
"""

from __future__ import annotations

import resource
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext import attention as A
from ext import mlp as M
from ext import ops as O

RTOL = 1e-5
SETTINGS = settings(max_examples=50, deadline=None)


def close(got, want, rtol=RTOL):
    """max |got - want| <= rtol * max(1, max |want|)."""
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(np.asarray(got, dtype=np.float64) - want).max(initial=0.0))
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} x scale {scale:.3g}"


def ref_attention(q, k, v, q_start, k_start, scale):
    """float64 causal GQA: (out (T,H,D), m (T,H), l (T,H)); rows with no visible key: 0, -inf, 0."""
    T, H, D = q.shape
    S, Hkv, _ = k.shape
    G = H // Hkv
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    out = np.zeros((T, H, D))
    m = np.full((T, H), -np.inf)
    l = np.zeros((T, H))
    visible = (k_start + np.arange(S))[None, :] <= (q_start + np.arange(T))[:, None]  # (T, S)
    rows = visible.any(axis=1)
    for h in range(H):
        s = q64[:, h] @ k64[:, h // G].T * scale                   # (T, S)
        s = np.where(visible, s, -np.inf)
        mh = np.where(rows, s.max(axis=1, initial=-np.inf), 0.0)
        p = np.where(visible, np.exp(s - mh[:, None]), 0.0)
        lh = p.sum(axis=1)
        out[rows, h] = (p[rows] @ v64[:, h // G]) / lh[rows, None]
        m[rows, h] = mh[rows]
        l[:, h] = lh
    return out, m, l


def rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def run(q, k, v, q_start, k_start, scale, algo, block=64, threads=1):
    T, H, D = q.shape
    out = np.full((T, H, D), np.nan, np.float32)
    m = np.full((T, H), np.nan, np.float32)
    l = np.full((T, H), np.nan, np.float32)
    A.attention(q, k, v, out, q_start, k_start, scale, algo=algo, block=block, m=m, l=l,
                num_threads=threads)
    return out, m, l


@st.composite
def attention_case(draw):
    T = draw(st.integers(1, 300))
    S = draw(st.integers(1, 300))
    Hkv = draw(st.sampled_from([1, 2, 3]))
    H = Hkv * draw(st.sampled_from([1, 2, 4]))
    D = draw(st.sampled_from([16, 64, 128]))
    # q_start: 0 (prefill), S - T (queries are the last keys: decode / chunked prefill), or anywhere.
    kind = draw(st.sampled_from(["prefill", "tail", "any"]))
    k_start = draw(st.integers(0, 50))
    if kind == "prefill":
        q_start = k_start
    elif kind == "tail":
        q_start = k_start + S - T
    else:
        q_start = draw(st.integers(-20, 400))
    block = draw(st.sampled_from([16, 64, 100]))
    seed = draw(st.integers(0, 2**31 - 1))
    return T, S, H, Hkv, D, q_start, k_start, block, seed


@SETTINGS
@given(attention_case())
def test_attention_matches_float64(case):
    T, S, H, Hkv, D, q_start, k_start, block, seed = case
    rng = np.random.default_rng(seed)
    q, k, v = rand(rng, T, H, D) * 2, rand(rng, S, Hkv, D) * 2, rand(rng, S, Hkv, D)
    scale = D ** -0.5
    want, wm, wl = ref_attention(q, k, v, q_start, k_start, scale)
    got = {}
    for algo in ("standard", "online_softmax"):
        o, m, l = got[algo] = run(q, k, v, q_start, k_start, scale, algo, block)
        close(o, want)
        np.testing.assert_array_equal(np.isinf(m), np.isinf(wm))
        fin = np.isfinite(wm)
        close(m[fin], wm[fin])
        close(l / np.maximum(wl, 1), wl / np.maximum(wl, 1))
        assert np.all(o[~fin] == 0) and np.all(l[~fin] == 0)
    close(got["standard"][0], got["online_softmax"][0])


@pytest.mark.parametrize("D", [40, 64, 128])
@pytest.mark.parametrize("Hkv, G", [(1, 1), (2, 4), (8, 2)])
@pytest.mark.parametrize("S, q_start", [(1, 0), (2, 1), (3, 2), (127, 126), (128, 127), (129, 128),
                                        (257, 256), (513, 512), (1000, 999), (1000, 700), (300, -1)])
def test_decode_attention_matches_float64(S, q_start, Hkv, G, D):
    """One query (the split-over-keys decode path: an even number of equal blocks of at most 128
    keys): every block boundary, keys the query does not see (q_start < S - 1: only the first
    q_start + 1 count), none visible, m and l; the same bits on 1, 2 and 3 threads. D: Qwen3's 128
    (the P V tile's unrolled width), 64, and 40 (a tail past the last whole vector)."""
    rng = np.random.default_rng(S + q_start + Hkv)
    H = Hkv * G
    q, k, v = rand(rng, 1, H, D) * 2, rand(rng, S, Hkv, D) * 2, rand(rng, S, Hkv, D)
    want, wm, wl = ref_attention(q, k, v, q_start, 0, D ** -0.5)
    for algo in ("standard", "online_softmax"):
        first = run(q, k, v, q_start, 0, D ** -0.5, algo, threads=1)[0]
        for threads in (1, 2, 3):
            o, m, l = run(q, k, v, q_start, 0, D ** -0.5, algo, threads=threads)
            np.testing.assert_array_equal(o, first)
            close(o, want)
            fin = np.isfinite(wm)
            np.testing.assert_array_equal(np.isinf(m), ~fin)
            close(m[fin], wm[fin])
            close(l / np.maximum(wl, 1), wl / np.maximum(wl, 1))
    out = np.empty_like(q)
    scores = np.full(A.standard_scores_size(1, H, Hkv, S), np.nan, np.float32)
    A.attention(q, k, v, out, q_start, 0, D ** -0.5, algo="standard", num_threads=2, scores=scores)
    close(out, want)


@pytest.mark.parametrize("algo", ["standard", "online_softmax"])
def test_attention_threads_agree(algo):
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, 77, 8, 64), rand(rng, 140, 4, 64), rand(rng, 140, 4, 64)
    one = run(q, k, v, 63, 0, 0.125, algo, 32, threads=1)
    two = run(q, k, v, 63, 0, 0.125, algo, 32, threads=2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("D", [8, 40])
@pytest.mark.parametrize("T", [1, 50])
def test_attention_head_dim_off_the_vector_width(D, T):
    """D not a multiple of 16 takes the scalar fallbacks of the vector tiles."""
    rng = np.random.default_rng(D + T)
    q, k, v = rand(rng, T, 4, D), rand(rng, 90, 2, D), rand(rng, 90, 2, D)
    want = ref_attention(q, k, v, 90 - T, 0, D ** -0.5)[0]
    for algo in ("standard", "online_softmax"):
        close(run(q, k, v, 90 - T, 0, D ** -0.5, algo, 32)[0], want)


def test_attention_rejects_unknown_algo():
    q = np.zeros((1, 2, 16), np.float32)
    kv = np.zeros((1, 1, 16), np.float32)
    with pytest.raises(ValueError, match="algo"):
        A.attention(q, kv, kv, np.empty_like(q), 0, 0, 1.0, algo="flash")


def test_attention_reads_readonly_inputs():
    rng = np.random.default_rng(2)
    q, k, v = rand(rng, 4, 2, 16), rand(rng, 9, 1, 16), rand(rng, 9, 1, 16)
    for a in (q, k, v):
        a.setflags(write=False)
    out = np.empty((4, 2, 16), np.float32)
    A.attention(q, k, v, out, 5, 0, 0.25)
    close(out, ref_attention(q, k, v, 5, 0, 0.25)[0])


@SETTINGS
@given(st.integers(2, 4), st.integers(1, 40), st.integers(4, 260), st.sampled_from([1, 2, 4]),
       st.sampled_from([16, 128]), st.sampled_from(["prefill", "decode"]), st.integers(0, 2**31 - 1))
def test_merge_of_key_ranges_equals_full_attention(parts, T, S, ratio, D, kind, seed):
    rng = np.random.default_rng(seed)
    Hkv = 2
    H = Hkv * ratio
    T = min(T, S)
    q, k, v = rand(rng, T, H, D), rand(rng, S, Hkv, D), rand(rng, S, Hkv, D)
    q_start = S - T if kind == "decode" else 0
    cuts = np.sort(rng.choice(np.arange(1, S), size=min(parts - 1, S - 1), replace=False))
    bounds = [0, *cuts.tolist(), S]
    P = len(bounds) - 1
    o_parts = np.empty((P, T, H, D), np.float32)
    m_parts = np.empty((P, T, H), np.float32)
    l_parts = np.empty((P, T, H), np.float32)
    for r, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        # A rank holding keys a..b-1 attends with k_start = a; later ranges see nothing for early queries.
        A.attention(q, k[a:b].copy(), v[a:b].copy(), o_parts[r], q_start, a, D ** -0.5,
                    m=m_parts[r], l=l_parts[r])
    out = np.empty((T, H, D), np.float32)
    m = np.empty((T, H), np.float32)
    l = np.empty((T, H), np.float32)
    A.merge(o_parts, m_parts, l_parts, out, m, l, num_threads=2)
    want, wm, wl = ref_attention(q, k, v, q_start, 0, D ** -0.5)
    close(out, want)
    close(m, wm)
    close(l / wl, np.ones_like(wl))


def test_standard_materialises_the_score_tensor():
    """standard holds every head x query x key score at once (the O(H T S) memory online_softmax
    avoids): a NaN-filled workspace ends up holding the causal half of H x T x S scores."""
    T, H, Hkv, D = 300, 4, 2, 32
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, T, H, D), rand(rng, T, Hkv, D), rand(rng, T, Hkv, D)
    need = A.standard_scores_size(T, H, Hkv, T)
    assert need >= H * T * T
    scores = np.full(need, np.nan, np.float32)
    out, out2 = np.empty_like(q), np.empty_like(q)
    A.attention(q, k, v, out, 0, 0, D ** -0.5, algo="standard", num_threads=2, scores=scores)
    A.attention(q, k, v, out2, 0, 0, D ** -0.5, algo="standard", num_threads=2)   # allocates its own
    np.testing.assert_array_equal(out, out2)
    close(out, ref_attention(q, k, v, 0, 0, D ** -0.5)[0])
    written = np.isfinite(scores).sum()
    assert written >= 0.45 * H * T * T, f"only {written} of {H * T * T} scores were held"
    with pytest.raises(ValueError, match="standard_scores_size"):
        A.attention(q, k, v, out, 0, 0, D ** -0.5, algo="standard", scores=scores[: need - 1])
    # The working memory the bench reports: O(H T S) for standard, O(threads x block) online.
    big = A.scratch_floats("standard", 4096, 16, 8, 128, 4096, 64, 2)
    small = A.scratch_floats("online_softmax", 4096, 16, 8, 128, 4096, 64, 2)
    assert big >= 16 * 4096 * 4096 and small < big / 1000


def test_online_softmax_long_sequence_memory_is_linear():
    """S = 16384 for one head: a score matrix would be 16384^2 x 4 B = 1 GiB; we must stay far below."""
    S, D = 16384, 64
    rng = np.random.default_rng(3)
    q, k, v = rand(rng, S, 1, D), rand(rng, S, 1, D), rand(rng, S, 1, D)
    out = np.empty_like(q)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, a high-water mark
    tracemalloc.start()
    A.attention(q, k, v, out, 0, 0, D ** -0.5, algo="online_softmax", block=64, num_threads=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    assert peak < 1 << 20, f"numpy allocations peaked at {peak} bytes"
    assert growth < 64 << 20, f"peak RSS grew by {growth / 2**20:.0f} MiB (a score matrix is 1024 MiB)"
    # Spot-check a few rows against the float64 reference on their visible prefix.
    for t in (0, 1000, S - 1):
        w, _, _ = ref_attention(q[t:t + 1], k[:t + 1], v[:t + 1], t, 0, D ** -0.5)
        close(out[t], w[0])


def silu(x):
    return x / (1.0 + np.exp(-x))


@pytest.mark.parametrize("T", [1, 3, 128])
@pytest.mark.parametrize("threads", [1, 2])
def test_mlp_matches_float64(T, threads):
    d, I = 64, 192
    rng = np.random.default_rng(T)
    x = rand(rng, T, d)
    wg, wu, wd = rand(rng, I, d) * 0.1, rand(rng, I, d) * 0.1, rand(rng, I, d) * 0.1
    for w in (wg, wu, wd):
        w.setflags(write=False)   # weights arrive as read-only memmaps
    ws = M.MLPWorkspace(128, I)
    out = np.empty((T, d), np.float32)
    M.mlp(x, wg, wu, wd, out, ws, num_threads=threads)
    x64 = x.astype(np.float64)
    want = (silu(x64 @ wg.T.astype(np.float64)) * (x64 @ wu.T.astype(np.float64))) @ wd.astype(np.float64)
    close(out, want)


def test_mlp_workspace_reused_and_grown():
    rng = np.random.default_rng(5)
    ws = M.MLPWorkspace(2, 32)
    buf = ws.gate
    wg, wu, wd = rand(rng, 32, 16), rand(rng, 32, 16), rand(rng, 32, 16)
    for T in (1, 2):
        M.mlp(rand(rng, T, 16), wg, wu, wd, np.empty((T, 16), np.float32), ws)
        assert ws.gate is buf
    M.mlp(rand(rng, 5, 16), wg, wu, wd, np.empty((5, 16), np.float32), ws)
    assert ws.max_T == 5
    with pytest.raises(ValueError, match="float32"):
        M.mlp(np.zeros((1, 16)), wg, wu, wd, np.empty((1, 16), np.float32), ws)


def ref_rmsnorm(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


@SETTINGS
@given(st.integers(1, 40), st.sampled_from([8, 64, 1024, 1030]), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_rmsnorm_and_add_rmsnorm(T, d, threads, seed):
    rng = np.random.default_rng(seed)
    x, delta, w = rand(rng, T, d) * 3, rand(rng, T, d), rand(rng, d)
    out = np.empty_like(x)
    O.rmsnorm(x, w, 1e-6, out, num_threads=threads)
    close(out, ref_rmsnorm(x, w, 1e-6))
    x0 = x.copy()
    O.add_rmsnorm(x, delta, w, 1e-6, out, num_threads=threads)
    h = x0.astype(np.float64) + delta
    close(x, h)
    close(out, ref_rmsnorm(h, w, 1e-6))


def ref_rope(x, pos, theta):
    """HF rotate_half RoPE in float64: x (T, nh, D) at positions pos (T,)."""
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, D, 2) / D)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv_freq           # (T, D/2)
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]          # (T, 1, D)
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    half = D // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


@SETTINGS
@given(st.integers(1, 30), st.integers(1, 5), st.sampled_from([16, 64, 128]), st.integers(0, 900),
       st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_qk_norm_rope(T, nh, D, pos0, threads, seed):
    rng = np.random.default_rng(seed)
    x, w = rand(rng, T, nh, D), rand(rng, D)
    cos, sin = O.rope_table(1024, D, 1e6)
    want = ref_rope(ref_rmsnorm(x, w, 1e-6), pos0 + np.arange(T), 1e6)
    O.qk_norm_rope(x, w, 1e-6, cos, sin, pos0, num_threads=threads)
    close(x, want)


def test_rope_table():
    cos, sin = O.rope_table(50, 8, 10000.0)
    assert cos.shape == sin.shape == (50, 4) and cos.dtype == np.float32
    ang = 49 * 10000.0 ** (-np.arange(0, 8, 2) / 8)
    close(cos[49], np.cos(ang), 1e-7)
    close(sin[49], np.sin(ang), 1e-7)


@pytest.mark.parametrize("threads", [1, 2])
def test_silu_mul_wide_range(threads):
    """The vectorised exp must hold over the whole float range SiLU sees, including overflow."""
    rng = np.random.default_rng(6)
    g = np.concatenate([np.linspace(-120, 120, 20001), rng.standard_normal(9999) * 5]).astype(np.float32)
    g = g.reshape(3, -1)
    u = rng.standard_normal(g.shape).astype(np.float32)
    want = silu(g.astype(np.float64)) * u
    M.silu_mul(g, u, num_threads=threads)
    assert np.all(np.isfinite(g))
    close(g, want)
    # relative error per element where the value is not tiny
    big = np.abs(want) > 1e-3
    assert np.max(np.abs(g[big] - want[big]) / np.abs(want[big])) < 1e-5


def test_vector_width_matches_the_cpu():
    """The kernels are built with -march=native: their vectors must be the CPU's register width.

    A vector wider than the registers compiles but runs through the stack (10x slower).
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags on this platform")
    expected = 16 if "avx512f" in flags else 8 if "avx" in flags else 4
    assert O.vector_lanes() == expected


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_stream_read_sums_every_aligned_word(threads):
    """ext.ops.stream_read reads each array's 8-byte-aligned words once: their sum modulo 2^64, as
    NumPy's uint64 sum of the same words, over arrays of odd sizes, offsets and dtypes."""
    rng = np.random.default_rng(threads)
    raw = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    arrays = [raw[3:3 + 4099], raw[:0], raw[:5], raw.view(np.float32)[7:2000],
              raw.view(np.uint16).reshape(128, -1)[1:9], raw]
    expected, nbytes = 0, 0
    for a in arrays:
        b = a.reshape(-1).view(np.uint8)
        start = -b.ctypes.data % 8
        words = b[start:start + (b.nbytes - start) // 8 * 8].view(np.uint64) if b.nbytes >= 8 else b[:0]
        expected = (expected + int(words.sum(dtype=np.uint64))) % 2**64
        nbytes += words.nbytes
    assert O.stream_read(arrays, threads) == expected
    kept = O.StreamSet(arrays)  # the engine's form: set up once, read again and again
    assert kept.read(threads) == kept.read(threads) == expected and kept.nbytes == nbytes
    assert O.StreamSet([]).read(threads) == 0


def test_stream_read_rejects_strided_arrays():
    with pytest.raises(ValueError, match="C-contiguous"):
        O.stream_read([np.zeros((8, 8), np.float32)[:, ::2]], 1)
    with pytest.raises(ValueError, match="num_threads"):
        O.stream_read([np.zeros(8)], 0)
    with pytest.raises(ValueError, match="num_threads"):
        O.StreamSet([np.zeros(8)]).read(0)
