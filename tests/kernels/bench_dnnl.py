"""Linear layers at Qwen3-0.6B's shapes: ours (ext.linear), numpy's OpenBLAS, oneDNN plain and packed.

A program, not a test (pytest does not collect it): python -m tests.kernels.bench_dnnl [--reps 7]
Prints one JSON record per (layer, M, dtype, variant) with the median time, GFLOP/s and GB/s of
weights. Variants of one cell run in alternating order, so their ratios come from adjacent runs.
At M <= 16 the weights cycle through copies totalling > 256 MiB so they come from DRAM, as in a
decode step. Keep OPENBLAS_CORETYPE as the environment sets it. --clock cpu times with the
process's CPU time, the work done whatever else shares the cores (meaningful at --threads 1; at 2
threads it also counts a waiting thread's spinning).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from ext import dnnl
from ext import linear as L
from model_export.dtypes import float32_to_bf16

# (name, N, K, transposed): o_proj and down_proj are stored transposed, (K, N)
LAYERS = (("q", 2048, 1024, False), ("kv", 1024, 1024, False), ("o", 1024, 2048, True),
          ("gate_up", 3072, 1024, False), ("down", 1024, 3072, True), ("lm_head", 151936, 1024, False))
MS = (1, 16, 128, 512)


def weights_of(dtype: str, N: int, K: int, transposed: bool, rng) -> tuple[np.ndarray, np.ndarray | None]:
    shape = (K, N) if transposed else (N, K)
    w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
    if dtype == "float32":
        return w, None
    if dtype == "bf16":
        return float32_to_bf16(w), None
    scale = (np.abs(w).max(axis=0 if transposed else 1) / 127).astype(np.float32)
    q = np.rint(w / (scale[None, :] if transposed else scale[:, None])).astype(np.int8)
    return q, scale


def variants(dtype: str, transposed: bool, threads: int):
    """name -> fn(x, w, scale, out) for this dtype."""
    out = {}
    kernel = L.linear_t if transposed else L.linear

    def ours(x, w, s, o):   # ext.linear with oneDNN routed out: GEMV / sgemm (int8 dequantized)
        saved = dict(L.ONEDNN_MIN_T)
        L.ONEDNN_MIN_T.update(dict.fromkeys(saved, 1 << 30))
        try:
            kernel(x, w, o, threads, s)
        finally:
            L.ONEDNN_MIN_T.update(saved)
    out["ours"] = ours
    if dtype == "float32":
        def blas(x, w, s, o):
            with threadpool_limits(threads, user_api="blas"):
                np.matmul(x, w if transposed else w.T, out=o)
        out["numpy"] = blas
    if dnnl.available():
        for packed in (False, True):
            out["onednn_packed" if packed else "onednn_plain"] = (
                lambda x, w, s, o, p=packed: dnnl.matmul(x, w, o, threads, transposed, s, p))
    return out


def bench_cell(name, N, K, transposed, M, dtype, threads, reps, rng, clock=time.perf_counter):
    w0, s0 = weights_of(dtype, N, K, transposed, rng)
    copies = 1 if M > 16 else max(1, min(16, (256 << 20) // w0.nbytes + 1))
    ws = [w0] + [w0.copy() for _ in range(copies - 1)]
    x = rng.standard_normal((M, K), dtype=np.float32)
    o = np.empty((M, N), np.float32)
    fns = variants(dtype, transposed, threads)
    times = {v: [] for v in fns}
    for fn in fns.values():   # warm-up: primitives, packed copies, page faults
        for w in ws:
            fn(x, w, s0, o)
    calls = max(2, int(0.1 / max(1e-6, _once(fns, ws, x, s0, o))))
    for _ in range(reps):
        for v, fn in fns.items():
            t0 = clock()
            for i in range(calls):
                fn(x, ws[i % copies], s0, o)
            times[v].append((clock() - t0) / calls)
    for v, ts in times.items():
        t = statistics.median(ts)
        impl = None
        if v.startswith("onednn"):
            impl = dnnl.implementation(w0.dtype, M, K, N, transposed, threads, v.endswith("packed"))
        yield {"layer": name, "M": M, "N": N, "K": K, "dtype": dtype, "variant": v, "impl": impl,
               "us": round(t * 1e6, 1), "gflops": round(2 * M * N * K / t / 1e9, 1),
               "weight_gbs": round(w0.nbytes / t / 1e9, 1)}


def _once(fns, ws, x, s0, o) -> float:
    fn = next(iter(fns.values()))
    t0 = time.perf_counter()
    fn(x, ws[0], s0, o)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", default=",".join(n for n, *_ in LAYERS))
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--dtypes", default="float32,bf16,int8")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    a = ap.parse_args()
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    rng = np.random.default_rng(0)
    print(json.dumps({"onednn": dnnl.version(), "sgemm": L.sgemm_source(),
                      "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}), flush=True)
    for name, N, K, tr in LAYERS:
        if name not in a.layers.split(","):
            continue
        for M in map(int, a.ms.split(",")):
            if name == "lm_head" and M > 16:
                continue   # the engine runs lm_head on the last token only
            for dtype in a.dtypes.split(","):
                for rec in bench_cell(name, N, K, tr, M, dtype, a.threads, a.reps, rng, clock):
                    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
