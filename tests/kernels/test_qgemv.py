"""The one-token int8 GEMV (ext/qgemv.h through ext.linear) against NumPy's exact integer product.

The kernel quantizes the activation row (s = max|x| / 127, xq = round(x / s)) and sums xq * q in
int32, which is exact, so the reference is the same quantization in NumPy, an int64 product and the
same float32 epilogue: the outputs must be equal bit for bit, for both kernels (AVX-512 VNNI where
the CPU has it, the plain C one everywhere), any thread count, shapes with tails of every kind
(K not a multiple of 64, N not a multiple of 64, chunk rows not a multiple of 4) and weights at
-128 (which the VNNI path's q + 128 offset must not mishandle).
"""

from __future__ import annotations

import numpy as np
import pytest

from ext import linear as L

KERNELS = L.int8_kernels()
# (K, N): Qwen3-0.6B's q and down shapes, and odd ones
SHAPES = ((1024, 2048), (3072, 1024), (1000, 77), (1030, 70), (96, 80), (64, 3), (5, 1), (258, 130))


@pytest.fixture(params=KERNELS)
def kernel(request):
    before = L.int8_kernel()
    L.set_int8_kernel(request.param)
    yield request.param
    L.set_int8_kernel(before)


def quantize(x):
    """ext/qgemv.h's q8_quantize in NumPy: the scale divided in float64, the product in float32."""
    amax = np.float64(np.abs(x).max())
    s = np.float32(amax / 127.0) if amax > 0 else np.float32(1.0)
    inv = np.float32(1.0 / np.float64(s))
    return np.rint(x * inv).astype(np.int64), s


def reference(x, q, scale, transposed):
    xq, s = quantize(x[0])
    acc = xq @ (q.astype(np.int64) if transposed else q.T.astype(np.int64))
    return (acc.astype(np.float32) * s * scale)[None, :]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("K, N", SHAPES)
def test_int8_gemv_is_the_exact_product(kernel, K, N, transposed, threads):
    rng = np.random.default_rng(K * 7 + N)
    q = rng.integers(-128, 128, (K, N) if transposed else (N, K), dtype=np.int8)
    q.flat[:: 7] = -128
    scale = rng.random(N, dtype=np.float32) + 0.01
    x = rng.standard_normal((1, K), dtype=np.float32)
    out = np.full((1, N), np.nan, np.float32)
    (L.linear_t if transposed else L.linear)(x, q, out, threads, scale)
    np.testing.assert_array_equal(out, reference(x, q, scale, transposed))
    assert L.implementation(np.int8, 1, K, N, transposed, threads) == f"gemv-int8:{kernel}"


def test_zero_activations_give_zero(kernel):
    q = np.ones((8, 64), np.int8)
    out = np.full((1, 8), np.nan, np.float32)
    L.linear(np.zeros((1, 64), np.float32), q, out, 1, np.ones(8, np.float32))
    np.testing.assert_array_equal(out, 0)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="choose from"):
        L.set_int8_kernel("avx9")


PREFETCH_SCRIPT = """
import sys, numpy as np
import pipeline
from ext import linear as L
from model_export.dtypes import BF16
rng = np.random.default_rng(3)
x = rng.standard_normal((1, 1030)).astype(np.float32)
q = rng.integers(-128, 128, (70, 1030), dtype=np.int8)
scale = rng.random(70).astype(np.float32)
wb = (rng.standard_normal((70, 1030)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(BF16)
a, b, c = np.zeros((1, 70), np.float32), np.zeros((1, 70), np.float32), np.zeros((1, 70), np.float32)
L.linear(x, q, a, 2, scale=scale)
L.linear(x, wb, b, 2)
w32 = np.ascontiguousarray(wb.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
L.linear(x, w32, c, 2)
np.save(sys.argv[1], np.concatenate([a, b, c]))
np.savez(sys.argv[1] + ".inputs.npz", x=x, w32=w32)
print(L.gemv_prefetch_bytes(np.int8), L.gemv_prefetch_bytes(BF16), L.gemv_prefetch_bytes(np.float32))
"""


def test_the_rows_prefetch_is_set_by_its_variable_and_changes_no_bit(tmp_path):
    """QWEN3_GEMV_PREFETCH sets how far ahead the int8, bf16 and float32 rows kernels prefetch
    (ext/prefetch.h); the int8 and bf16 products are the same bits at every distance, and the int8
    one is the exact product; float32 reads one row at a time where it prefetches and eight rows at
    once where not (0): the same bits at every distance above 0, within float32 rounding of 0's."""
    import os
    import subprocess
    import sys

    from tests.mpi import REPO

    outs = {}
    for pf in ("0", "64", "8192"):
        env = dict(os.environ, QWEN3_GEMV_PREFETCH=pf, PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-c", PREFETCH_SCRIPT, str(tmp_path / f"{pf}.npy")], env=env,
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[-3:] == [pf, pf, pf]
        outs[pf] = np.load(tmp_path / f"{pf}.npy")
    assert np.array_equal(outs["0"][:2], outs["64"][:2]) and np.array_equal(outs["0"][:2], outs["8192"][:2])
    assert np.array_equal(outs["64"][2], outs["8192"][2])
    inputs = np.load(tmp_path / "0.npy.inputs.npz")  # the float32 product's operands
    x64, w32 = inputs["x"].astype(np.float64), inputs["w32"].astype(np.float64)
    bound = 1e-5 * np.abs(x64) @ np.abs(w32).T  # float32 rounding of a 1030-term sum, with room
    for pf in ("0", "64"):
        assert np.all(np.abs(outs[pf][2] - (x64 @ w32.T)[0]) <= bound[0])
    env = {k: v for k, v in os.environ.items() if k != "QWEN3_GEMV_PREFETCH"}  # the defaults
    proc = subprocess.run([sys.executable, "-c", PREFETCH_SCRIPT, str(tmp_path / "default.npy")],
                          env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    with open("/proc/cpuinfo") as f:
        info = f.read()
    intel, amd512 = "GenuineIntel" in info, "AuthenticAMD" in info and " avx512f" in info
    want = ["16384", "4096", "0"] if intel else ["0", "0", "4096"] if amd512 else ["0", "0", "0"]
    assert proc.stdout.split()[-3:] == want
    assert np.array_equal(np.load(tmp_path / "default.npy")[:2], outs["0"][:2])
    assert np.array_equal(np.load(tmp_path / "default.npy")[2], outs["64" if amd512 else "0"][2])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1030)).astype(np.float32)
    q = rng.integers(-128, 128, (70, 1030), dtype=np.int8)
    scale = rng.random(70).astype(np.float32)
    np.testing.assert_array_equal(outs["0"][0], reference(x, q, scale, False)[0])
