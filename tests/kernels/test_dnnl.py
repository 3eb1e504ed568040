"""ext.dnnl (oneDNN matmul) and the int8 paths of ext.linear / ext.mlp against NumPy float64.

Every reference takes the kernel's own inputs: activations rounded to bf16 for the bf16 matmul,
quantized per token (s = max|x| / 127, q = round(x / s)) for int8, weights widened exactly.
Tolerances, once per dtype, relative to the output's scale (max(1, max |want|)):
- float32, bf16: 1e-5, float32 accumulation of up to a few thousand terms (~100 ulp of headroom);
  the bf16 inputs are exact in float32, so bf16 gets no slack of its own.
- int8: 1e-5 against the float64 product of the quantized operands: the s32 accumulation is
  exact, what is left is float32 rounding of the scales' products and of the +128 shift's
  cancellation. Against the unquantized float64 product int8 is only ~1e-2 close, which
  test_int8_close_to_float is there to bound (a lost scale is off by O(1)).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ext import dnnl
from ext import linear as L
from ext import mlp as M
from model_export.dtypes import bf16_to_float32, float32_to_bf16

RTOL = {"float32": 1e-5, "bf16": 1e-5, "int8": 1e-5}
# implementations that quantize or round the activations (oneDNN's matmul, our one-token int8 GEMV,
# our one-token bf16 GEMV on the bf16 units)
QUANTIZING = ("onednn", "gemv-int8", "gemv-bf16")
needs_dnnl = pytest.mark.skipif(not dnnl.available(), reason=f"oneDNN absent: {dnnl.load_error()}")
# M not a multiple of the kernels' blocks, K and N small and odd, and Qwen3-like
SHAPES = ((1, 64, 48), (3, 21, 37), (17, 1031, 515), (130, 1024, 1000), (5, 1, 3))


def close(got, want, rtol):
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(np.asarray(got, dtype=np.float64) - want).max(initial=0.0))
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} x scale {scale:.3g}"


def quantize_weights(w, transposed):
    """int8 q and float32 per-output-channel scale with w ~ q * scale (axis N)."""
    axis = 0 if transposed else 1
    scale = (np.abs(w).max(axis=axis) / 127).astype(np.float32)
    scale[scale == 0] = 1
    q = np.rint(w / (scale[None, :] if transposed else scale[:, None])).astype(np.int8)
    return q, scale


def quantized_x(x):
    """x as the int8 path sees it, float64: per row s = max|x| / 127, round(x * (1/s)) * s."""
    s = (np.abs(x).max(axis=1) / np.float32(127)).astype(np.float32)
    s[s == 0] = 1
    inv = (np.float32(1) / s).astype(np.float32)
    q = np.rint((x * inv[:, None]).astype(np.float32))
    return q.astype(np.float64) * s[:, None].astype(np.float64)


def operands(dtype, M_, K, N, transposed, seed):
    """(x, w, scale, x as the kernel sees it, w as float64 (K, N))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M_, K), dtype=np.float32)
    w = rng.standard_normal((K, N) if transposed else (N, K), dtype=np.float32) * np.float32(0.05)
    if dtype == "float32":
        wf, scale, xs = w, None, x.astype(np.float64)
        w64 = w.astype(np.float64)
    elif dtype == "bf16":
        wf, scale = float32_to_bf16(w), None
        xs = bf16_to_float32(float32_to_bf16(x)).astype(np.float64)
        w64 = bf16_to_float32(wf).astype(np.float64)
    else:
        wf, scale = quantize_weights(w, transposed)
        xs = quantized_x(x)
        w64 = wf.astype(np.float64) * (scale[None, :] if transposed else scale[:, None])
    return x, wf, scale, xs, (w64 if transposed else w64.T)


@needs_dnnl
@pytest.mark.parametrize("packed", (False, True))
@pytest.mark.parametrize("transposed", (False, True))
@pytest.mark.parametrize("dtype", ("float32", "bf16", "int8"))
@pytest.mark.parametrize("M_, K, N", SHAPES)
def test_matmul(M_, K, N, dtype, transposed, packed):
    x, w, scale, xs, w64 = operands(dtype, M_, K, N, transposed, M_ + K + N)
    for threads in (1, 2):
        if dnnl.implementation(w.dtype, M_, K, N, transposed, threads, packed) is None:
            pytest.skip(f"oneDNN has only `ref` for {dtype} here")
        out = np.full((M_, N), np.nan, np.float32)
        impl = dnnl.matmul(x, w, out, threads, transposed, scale, packed)
        assert impl and not impl.startswith("ref")
        close(out, xs @ w64, RTOL[dtype])


@needs_dnnl
def test_zero_rows_and_primitive_cache():
    """A zero activation row quantizes with scale 1 (no 0/0); a second call reuses the primitive."""
    x, w, scale, xs, w64 = operands("int8", 4, 64, 32, False, 1)
    x[2] = 0
    out = np.empty((4, 32), np.float32)
    dnnl.matmul(x, w, out, 2, False, scale)
    assert np.all(out[2] == 0)
    close(out, quantized_x(x) @ w64, RTOL["int8"])
    assert dnnl.primitive(np.int8, 4, 64, 32, False, 2) is dnnl.primitive(np.int8, 4, 64, 32, False, 2)


@needs_dnnl
def test_read_only_memmap_weights(tmp_path):
    """The export's weights are read-only memory maps: used in place, every dtype."""
    for dtype in ("float32", "bf16", "int8"):
        x, w, scale, xs, w64 = operands(dtype, 20, 200, 300, False, 2)
        path = tmp_path / f"w_{dtype}.bin"
        w.tofile(path)
        wm = np.memmap(path, dtype=w.dtype, mode="r", shape=w.shape)
        out = np.empty((20, 300), np.float32)
        dnnl.matmul(x, wm, out, 2, False, scale)
        close(out, xs @ w64, RTOL[dtype])


@pytest.mark.parametrize("transposed", (False, True))
@pytest.mark.parametrize("T", (1, 5, 16, 17, 130))
def test_linear_int8(T, transposed):
    """linear / linear_t with int8 weights: oneDNN, or dequantized blocks without it."""
    K, N = (1100, 300) if transposed else (300, 1100)
    x, w, scale, xs, w64 = operands("int8", T, K, N, transposed, T)
    out = np.full((T, N), np.nan, np.float32)
    fn = L.linear_t if transposed else L.linear
    fn(x, w, out, num_threads=2, scale=scale)
    onednn = L.implementation(w.dtype, T, K, N, transposed, 2).startswith(QUANTIZING)
    # without oneDNN the activations stay float32: the reference is the float64 product then
    close(out, (xs if onednn else x.astype(np.float64)) @ w64, RTOL["int8"])


def test_int8_close_to_float():
    """The quantized product stays near the float one: per-token and per-channel scales at 8 bits
    leave ~0.5% of the output's scale; a dropped or misplaced scale would be off by O(1)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 512), dtype=np.float32)
    w = rng.standard_normal((256, 512), dtype=np.float32) * np.float32(0.05)
    q, scale = quantize_weights(w, False)
    out = np.empty((9, 256), np.float32)
    L.linear(x, q, out, num_threads=2, scale=scale)
    close(out, x.astype(np.float64) @ w.T.astype(np.float64), 2e-2)


def test_linear_many_and_mlp_int8():
    rng = np.random.default_rng(9)
    d, I = 128, 384
    for T in (1, 7, 40):
        x = rng.standard_normal((T, d), dtype=np.float32)
        mats = [quantize_weights(rng.standard_normal((I, d), dtype=np.float32) * np.float32(0.05),
                                 t) for t in (False, False, True)]
        outs = [np.empty((T, I), np.float32) for _ in range(2)]
        L.linear_many(x, [m[0] for m in mats[:2]], outs, 2, scales=[m[1] for m in mats[:2]])
        for (q, s), o in zip(mats[:2], outs, strict=True):
            single = np.empty_like(o)
            L.linear(x, q, single, 2, s)
            np.testing.assert_array_equal(o, single)
        out = np.empty((T, d), np.float32)
        ws = M.MLPWorkspace(T, I)
        M.mlp(x, mats[0][0], mats[1][0], mats[2][0], out, ws, 2, scales=[m[1] for m in mats])
        g, u = outs[0].astype(np.float64), outs[1].astype(np.float64)
        h = (g / (1 + np.exp(-g)) * u).astype(np.float32)
        close(ws.gate[:T], h, 1e-5)
        down = np.empty((T, d), np.float32)
        L.linear_t(ws.gate[:T].copy(), mats[2][0], down, 2, mats[2][1])
        np.testing.assert_array_equal(out, down)


def test_int8_bad_input():
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (8, 16), dtype=np.int8)
    x, out = rng.standard_normal((2, 16), dtype=np.float32), np.empty((2, 8), np.float32)
    with pytest.raises(ValueError, match="need scale"):
        L.linear(x, q, out)
    with pytest.raises(ValueError, match="scale"):
        L.linear(x, q, out, scale=np.ones(7, np.float32))
    with pytest.raises(ValueError, match="int8 weights only"):
        L.linear(x, q.astype(np.float32), out, scale=np.ones(8, np.float32))
    with pytest.raises(ValueError, match="scales"):
        M.mlp(x, q, q, q, np.empty((2, 16), np.float32),
              M.MLPWorkspace(2, 8), 1)


def _run(code: str, **env) -> str:
    """Run code in a fresh interpreter (oneDNN is chosen when ext.dnnl loads) with env added."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


CHECK = """
import numpy as np
from ext import dnnl, linear as L
from tests.kernels.test_dnnl import operands, close, RTOL, QUANTIZING
print(dnnl.available(), dnnl.load_error())
for dtype in ("float32", "bf16", "int8"):
    # T = 11: past ONEDNN_MIN_T, within our GEMV's reach (the way back when oneDNN cannot)
    for T, tr in ((1, False), (11, False), (40, False), (40, True)):
        x, w, s, xs, w64 = operands(dtype, T, 96, 80, tr, 3)
        out = np.empty((T, 80), np.float32)
        (L.linear_t if tr else L.linear)(x, w, out, 2, s)
        impl = L.implementation(w.dtype, T, 96, 80, tr, 2)
        ref = xs if impl.startswith(QUANTIZING) else x.astype(np.float64)
        close(out, ref @ w64, RTOL[dtype])
        print(dtype, T, tr, impl)
        if not tr:   # linear_many is one linear per weight, bit for bit
            many = np.empty((T, 80), np.float32)
            L.linear_many(x, (w,), (many,), 2, None if s is None else (s,))
            np.testing.assert_array_equal(many, out)
from ext import mlp as M
for T in (1, 40):   # the int8 MLP is its three products and silu * up, on whatever path ran
    x, wg, sg, _, _ = operands("int8", T, 64, 96, False, 5)
    _, wu, su, _, _ = operands("int8", T, 64, 96, False, 6)
    _, wd, sd, _, _ = operands("int8", T, 96, 64, True, 7)
    out, ws = np.empty((T, 64), np.float32), M.MLPWorkspace(T, 96)
    M.mlp(x, wg, wu, wd, out, ws, 2, scales=(sg, su, sd))
    g, u, down = np.empty((T, 96), np.float32), np.empty((T, 96), np.float32), np.empty_like(out)
    L.linear(x, wg, g, 2, sg)
    L.linear(x, wu, u, 2, su)
    M.silu_mul(g, u, 2)
    L.linear_t(g, wd, down, 2, sd)
    np.testing.assert_array_equal(out, down)
print("mlp ok")
"""


def test_fallback_without_onednn():
    """oneDNN absent: a message naming the package, and every dtype on our own kernels."""
    out = _run(CHECK, QWEN3_ONEDNN_LIBRARY="/nonexistent/libdnnl.so.3")
    first = out.splitlines()[0]
    assert first.startswith("False") and dnnl.PACKAGE in first
    assert "onednn:" not in out and "int8 1 False gemv-int8:" in out and "mlp ok" in out
    assert "int8 11 False gemv+dequant" in out


@needs_dnnl
def test_ref_is_refused():
    """oneDNN capped at SSE4.1 (ONEDNN_MAX_CPU_ISA) offers `ref` for bf16 matmul, and an int8
    one without VNNI (16-bit pair sums that saturate): both refused, so those products run on our
    kernels (dequantized int8), correct, and the name says which ran."""
    out = _run(CHECK, ONEDNN_MAX_CPU_ISA="SSE41")
    low = [ln for ln in out.splitlines() if ln.startswith(("bf16", "int8"))]
    assert len(low) == 8 and all("onednn" not in ln for ln in low), out
    assert any(ln.endswith("sgemm") or ln.endswith("numpy") for ln in low), out
    assert "mlp ok" in out


@needs_dnnl
def test_one_packed_copy_per_weight():
    """int8 weights are packed once: prefill and decode shapes, and a view of the same memory,
    share one copy of the weight's own size."""
    x, w, scale, xs, w64 = operands("int8", 64, 256, 192, False, 4)
    before = dnnl.packed_bytes()
    for T in (1, 3, 64):
        out = np.empty((T, 192), np.float32)
        dnnl.matmul(x[:T].copy(), w[:], out, 2, False, scale, True)
        close(out, xs[:T] @ w64, RTOL["int8"])
    assert dnnl.packed_bytes() - before == w.nbytes


@needs_dnnl
@pytest.mark.parametrize("dtype", ("bf16", "int8"))
@pytest.mark.parametrize("T", (1, 9, 130))
def test_linear_t_on_rows(T, dtype):
    """linear_t given the same weights as rows (rows=w_t.T, ext.decode's copies): the product of
    w_t still, multiplied from the rows where packs() keeps rows in place (AMX), with no packed
    copy made then; a rows array of another shape or dtype is refused."""
    K, N = 1100, 300
    x, w_t, scale, xs, w64 = operands(dtype, T, K, N, True, T + 7)
    rows = np.ascontiguousarray(w_t.T)
    out = np.full((T, N), np.nan, np.float32)
    before = dnnl.packed_bytes()
    L.linear_t(x, w_t, out, 2, scale, rows=rows)
    impl = L.implementation(w_t.dtype, T, K, N, True, 2, True)
    close(out, (xs if impl.startswith(QUANTIZING) else x.astype(np.float64)) @ w64, RTOL[dtype])
    if impl.startswith("onednn") and not L.packs(w_t.dtype, False):
        assert dnnl.packed_bytes() == before, "multiplied from a packed copy, not from the rows"
        assert not impl.endswith(":packed")
    for bad in (rows[:, :-1], rows.astype(np.float32), w_t):
        with pytest.raises(ValueError, match="rows"):
            L.linear_t(x, w_t, out, 2, scale, rows=bad)
