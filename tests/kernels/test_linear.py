"""ext.linear and ext.mlp (float32 or bf16 weights, float32 compute) against NumPy float64 references.

bf16 references widen the bits with model_export.dtypes.bf16_to_float32 (exact) and compute in
float64, so the only error left is the kernels' float32 rounding. Where a product runs on
oneDNN's bf16 matmul or our one-token GEMV on the bf16 units (L.implementation says which), the
kernel rounds the activations to bf16 first, and so does the reference: the same inputs, not a
looser tolerance. Token counts cover every path:
our GEMV (T <= 16) and the GEMM (oneDNN, or BLAS's sgemm on our OpenMP threads). Tolerance as in test_kernels:
1e-5 relative to the output's scale (sums of up to a few thousand float32 terms leave ~100 ulp of
headroom; a wrong row, column or tail is off by O(1)).
"""

from __future__ import annotations

import gc
import resource
import tracemalloc

import numpy as np
import pytest

from ext import linear as L
from ext import mlp as M
from model_export.dtypes import BF16, bf16_to_float32, float32_to_bf16

RTOL = 1e-5
TOKENS = (1, 2, 5, 13, 128, 300)
# (N, K): Qwen-like, odd sizes that are not multiples of the 16-lane vector, the 64-row GEMV
# block, the 256-row chunk or the BLAS scratch block, and a single row / column.
SHAPES = ((256, 128), (1000, 520), (37, 21), (515, 1031), (1, 17), (3, 1))


def close(got, want, rtol=RTOL):
    """max |got - want| <= rtol * max(1, max |want|)."""
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(np.asarray(got, dtype=np.float64) - want).max(initial=0.0))
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} x scale {scale:.3g}"


def bf16_weights(rng, *shape, scale=0.05):
    """Random bf16 bit patterns (uint16): float32 normals rounded to nearest even bf16."""
    return float32_to_bf16(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))


def weights(dtype, rng, *shape):
    """Random weights of one of the two weight dtypes: "bf16" (uint16 bits) or "float32"."""
    w = bf16_weights(rng, *shape)
    return w if dtype == "bf16" else bf16_to_float32(w)


def widened(w):
    return (bf16_to_float32(w) if w.dtype == BF16 else w).astype(np.float64)


def x_seen(x, w, transposed=False):
    """x as the kernel multiplies it, float64: rounded to bf16 where a bf16 product runs on the
    bf16 units (oneDNN's matmul, our one-token GEMV on AVX512_BF16)."""
    T, K = x.shape
    N = w.shape[1] if transposed else w.shape[0]
    impl = L.implementation(w.dtype, T, K, N, transposed, 1)
    if w.dtype == BF16 and impl.startswith(("onednn", "gemv-bf16")):
        x = bf16_to_float32(float32_to_bf16(x))
    return x.astype(np.float64)


DTYPES = ("bf16", "float32")


def x_of(rng, T, K):
    return rng.standard_normal((T, K), dtype=np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K", SHAPES)
@pytest.mark.parametrize("T", TOKENS)
def test_linear(T, N, K, dtype):
    rng = np.random.default_rng(T * 1000 + N + K)
    w, x = weights(dtype, rng, N, K), x_of(rng, T, K)
    want = x_seen(x, w) @ widened(w).T
    outs = []
    for threads in (1, 2):
        out = np.full((T, N), np.nan, np.float32)
        L.linear(x, w, out, num_threads=threads)
        close(out, want)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])  # the thread count does not change a bit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K", SHAPES + ((1024, 1100),))   # K > 2 x 256: several partial sums
@pytest.mark.parametrize("T", TOKENS)
def test_linear_t(T, N, K, dtype):
    rng = np.random.default_rng(T * 1000 + N + K + 1)
    w_t, x = weights(dtype, rng, K, N), x_of(rng, T, K)
    want = x_seen(x, w_t, True) @ widened(w_t)
    outs = []
    for threads in (1, 2):
        out = np.full((T, N), np.nan, np.float32)
        L.linear_t(x, w_t, out, num_threads=threads)
        close(out, want)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


def ref_mlp(x, wg, wu, wd, h_kernel=None):
    """The MLP in float64 on the kernel's inputs. Where the down product rounds its input to
    bf16, a float32 h one ulp off the reference's can round to the other bf16 neighbour; the
    down product's reference then starts from the kernel's own h (h_kernel: ws.gate after the
    call, itself checked against the reference's h), so each product is compared on its inputs."""
    xs = x_seen(x, wg)
    g, u = xs @ widened(wg).T, xs @ widened(wu).T
    h = g / (1.0 + np.exp(-g)) * u
    if h_kernel is not None and wd.dtype == BF16:
        close(h_kernel, h)
        h = h_kernel
    return x_seen(h.astype(np.float32), wd, True) @ widened(wd)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d, I", ((64, 128), (100, 600), (1024, 3072)))
@pytest.mark.parametrize("T", TOKENS)
def test_mlp(T, d, I, dtype):
    rng = np.random.default_rng(T + d + I)
    wg, wu, wd = (weights(dtype, rng, I, d) for _ in range(3))
    x = x_of(rng, T, d)
    ws = M.MLPWorkspace(2, I)   # grown on demand
    outs = []
    for threads in (1, 2):
        out = np.full((T, d), np.nan, np.float32)
        M.mlp(x, wg, wu, wd, out, ws, num_threads=threads)
        close(out, ref_mlp(x, wg, wu, wd, ws.gate[:T].copy()))
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", (1, 3, 16, 17, 40))
def test_linear_many_is_each_linear(T, dtype):
    """q, k, v in one call (one parallel region for T <= 16): the same bits as three linear calls."""
    rng = np.random.default_rng(T)
    ws = [weights(dtype, rng, n, 200) for n in (256, 70, 70)]
    x = x_of(rng, T, 200)
    outs = [np.full((T, w.shape[0]), np.nan, np.float32) for w in ws]
    L.linear_many(x, ws, outs, num_threads=2)
    for w, out in zip(ws, outs, strict=True):
        single = np.empty_like(out)
        L.linear(x, w, single, num_threads=1)
        np.testing.assert_array_equal(out, single)
        close(out, x_seen(x, w) @ widened(w).T)
    with pytest.raises(ValueError, match="one dtype"):
        L.linear_many(x, [ws[0], weights("float32" if dtype == "bf16" else "bf16", rng, 70, 200)],
                      outs[:2])
    with pytest.raises(ValueError, match="one output each"):
        L.linear_many(x, ws, outs[:2])


def test_read_only_memmap_weights(tmp_path):
    """Export weights are read-only memmaps of uint16 bits: accepted as they are, no copy."""
    rng = np.random.default_rng(7)
    w = bf16_weights(rng, 300, 200)
    path = tmp_path / "w.bin"
    w.tofile(path)
    wm = np.memmap(path, dtype=BF16, mode="r", shape=w.shape)
    x = x_of(rng, 3, 200)
    for T in (1, 20):
        out = np.empty((T, 300), np.float32)
        L.linear(x[:1].repeat(T, 0), wm, out)
        close(out, x_seen(x[:1].repeat(T, 0), w) @ widened(w).T)
        out_t = np.empty((T, 200), np.float32)
        xt = np.ascontiguousarray(x_of(rng, T, 300))
        L.linear_t(xt, wm, out_t)
        close(out_t, x_seen(xt, w, True) @ widened(w))


@pytest.mark.parametrize("fn", ["linear", "linear_t"])
def test_bad_input(fn):
    rng = np.random.default_rng(0)
    w = bf16_weights(rng, 8, 8)
    x, out = x_of(rng, 2, 8), np.empty((2, 8), np.float32)
    kernel = getattr(L, fn)
    with pytest.raises(ValueError, match="float32 or uint16 or int8"):
        kernel(x, bf16_to_float32(w).astype(np.float64), out)   # float64 weights: neither dtype
    with pytest.raises(ValueError, match="float32"):
        kernel(x.astype(np.float64), w, out)
    with pytest.raises(ValueError, match="shape"):
        kernel(x, w, np.empty((2, 9), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        kernel(np.asfortranarray(x), w, out)
    with pytest.raises(ValueError, match="num_threads"):
        kernel(x, w, out, num_threads=0)


def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


@pytest.mark.parametrize("T", (1, 5, 128))
def test_no_float32_copy_of_the_weights(T):
    """A 3072 x 8192 weight (96 MiB in float32, 48 MiB as bf16): neither NumPy allocations
    (tracemalloc) nor the process's resident memory grow by more than a small fraction of its
    float32 size, beside the bf16 copies oneDNN packs (one per product, where it runs): the
    kernels widen O(block) at a time."""
    rng = np.random.default_rng(3)
    N, K = 3072, 8192
    w = rng.integers(0x3C00, 0x3D00, size=(N, K), dtype=np.uint16)   # bf16 in [2^-7, 2^-6)
    f32_bytes = N * K * 4
    x = x_of(rng, T, K)
    out = np.empty((T, N), np.float32)
    x_t = x_of(rng, T, N)
    out_t = np.empty((T, K), np.float32)
    L.linear(x[:1, :64].copy(), w[:16, :64].copy(), out[:1, :16].copy())   # import-time state
    gc.collect()
    rss0 = _rss_kb()
    tracemalloc.start()
    try:
        L.linear(x, w, out, num_threads=2)
        L.linear_t(x_t, w, out_t, num_threads=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = (_rss_kb() - rss0) * 1024
    onednn = L.implementation(BF16, T, K, N, False, 2).startswith("onednn")
    copies = sum(L.packs(BF16, transposed) for transposed in (False, True)) if onednn else 0
    allowed = f32_bytes / 8 + copies * w.nbytes   # linear's and linear_t's packed copies, if any
    assert peak < allowed, f"NumPy allocations peaked at {peak / 2**20:.1f} MiB"
    assert grown < allowed, f"resident memory grew by {grown / 2**20:.1f} MiB"
    close(out[:, :5], x_seen(x, w) @ widened(w[:5]).T)
    close(out_t[:, :7], x_seen(x_t, w, True) @ widened(w[:, :7]))
