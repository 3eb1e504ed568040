"""Micro-benchmark of the ext/ kernels against the same computation in plain NumPy (float32).

    python -m pipeline.study.kernels_bench [--threads N] [--out FILE.json] [--quick] [--only PART ...]

Shapes are Qwen3-0.6B's: attention H=16, Hkv=8, D=128 (prefill T=S in {128, 1024, 4096}, decode
T=1 against S in {128, 4096}); MLP d=1024, I=3072 at T in {1, 128}. Attention GFLOP/s count the
causal work only (4 D flops per visible query-key pair and head), for the kernel and NumPy alike,
although NumPy computes the full square. The MLP is also held against numpy's own GEMM rate at the
same shapes (the BLAS ceiling). Last, the OpenMP/BLAS interference check: numpy's GEMM (OpenBLAS's
own threads) and ext.linear's GEMM (sgemm on our OpenMP threads) alone and right after a prange
call, and a prange kernel alone and right after numpy's GEMM, under combinations of
OMP_WAIT_POLICY (default: what `import ext` sets, GOMP_SPINCOUNT=100000) and
OPENBLAS_THREAD_TIMEOUT (22 is what `import ext` sets, 28 OpenBLAS's default), each in a fresh
process because both libraries read them once, when they load.

bf16 rows (ext.linear with bf16 weights widened on the fly): decode GEMVs (T=1) at the 0.6B shapes
against numpy's float32 GEMV on the float32 copy of the same weights, in GB/s of weights read and
as a speed-up (reading half the bytes, at most 2x if both stream at the memory bandwidth). The
(I, d) GEMVs cycle through enough distinct matrices to exceed the L3 cache, so both stream from
memory as in a decode step. Then prefill GEMMs (T=128) through ext.linear against numpy's float32
GEMM, as a GFLOP/s ratio. numpy runs with --threads BLAS threads throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# isort: off
import ext  # noqa: F401  (before numpy: sets the thread wait policies before libgomp and OpenBLAS load)
import numpy as np
# isort: on

H, HKV, D = 16, 8, 128        # Qwen3-0.6B attention
DM, IM = 1024, 3072           # Qwen3-0.6B hidden and intermediate
VOCAB = 151936                # Qwen3-0.6B vocabulary (the lm_head GEMV)
GEMV_COPIES = 8               # distinct (I, d) matrices per GEMV timing: 48 MiB bf16 > 32 MiB L3
PARTS = ("attention", "mlp", "bf16", "interference")
POLICIES = ("passive", "active", "default")
# (OMP_WAIT_POLICY, OPENBLAS_THREAD_TIMEOUT) pairs for the interference probe; 28 is OpenBLAS's default.
PROBES = (("default", "22"), ("passive", "22"), ("passive", "28"), ("active", "28"), ("passive", "4"))
PROBE_T = 1024                # the prange kernel of the interference probe: attention T=S=1024


def time_ms(fns: dict, repeats: int, settle_s: float = 0.0) -> dict[str, tuple[float, float]]:
    """{name: (median, min) wall ms} of each fn() over `repeats` rounds after one warm-up round.

    The functions take turns within each round, so load from other processes on a shared
    machine falls on all of them alike and the ratios between them stay fair. `settle_s`: sleep
    before each timing, so idle BLAS threads (spinning ~1.6 ms after a call) have gone to sleep
    and do not share a core with the next function's threads.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (float(np.median(t)) * 1e3, float(np.min(t)) * 1e3) for name, t in times.items()}


def numpy_attention(q, k, v, q_start, k_start, scale):
    """Plain NumPy standard attention in float32: scores, causal mask, softmax, times V, per KV group."""
    T, S = q.shape[0], k.shape[0]
    G = q.shape[1] // k.shape[1]
    mask = (k_start + np.arange(S))[None, :] > (q_start + np.arange(T))[:, None]   # (T, S)
    out = np.empty_like(q)
    for g in range(k.shape[1]):
        qg = q[:, g * G:(g + 1) * G].transpose(1, 0, 2)                 # (G, T, D)
        s = qg @ k[:, g].T * np.float32(scale)                          # (G, T, S)
        s[:, mask] = -np.inf
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        out[:, g * G:(g + 1) * G] = (s @ v[:, g]).transpose(1, 0, 2)    # (T, G, D)
    return out


def numpy_mlp(x, wg, wu, wd):
    g = x @ wg.T
    return (g / (1.0 + np.exp(-g)) * (x @ wu.T)) @ wd


def bench_attention(threads: int, repeats: int, quick: bool) -> list[dict]:
    from ext import attention as A

    rng = np.random.default_rng(0)
    cases = [(t, t) for t in ((128, 1024) if quick else (128, 1024, 4096))] + [(1, 128), (1, 4096)]
    rows = []
    for T, S in cases:
        q = rng.standard_normal((T, H, D), dtype=np.float32)
        k = rng.standard_normal((S, HKV, D), dtype=np.float32)
        v = rng.standard_normal((S, HKV, D), dtype=np.float32)
        out = np.empty_like(q)
        q_start, scale = S - T, D ** -0.5
        pairs = sum(min(S, q_start + t + 1) for t in range(T))       # visible (query, key) pairs
        gflop = 4.0 * D * H * pairs / 1e9
        reps = max(3, repeats // 2) if T * S >= 4096 * 4096 else repeats
        args = (q, k, v, q_start, 0, scale)
        fns = {"numpy": lambda args=args: numpy_attention(*args)}
        for algo in ("standard", "online_softmax"):
            fns[algo] = lambda args=args, algo=algo, out=out: A.attention(
                *args[:3], out, *args[3:], algo=algo, num_threads=threads)
        timed = time_ms(fns, reps)
        np_ms, np_min = timed["numpy"]
        want = numpy_attention(*args)
        for algo in ("standard", "online_softmax"):
            fns[algo]()
            ms, ms_min = timed[algo]
            row = {"kernel": "attention", "algo": algo, "T": T, "S": S, "ms": ms, "ms_min": ms_min,
                   "gflops": gflop / ms * 1e3, "numpy_ms": np_ms, "numpy_ms_min": np_min,
                   "numpy_gflops": gflop / np_ms * 1e3, "speedup_vs_numpy": np_ms / ms,
                   "max_abs_diff_vs_numpy": float(np.abs(out - want).max())}
            if T == 1:
                row["kv_gb_per_s"] = 2 * S * HKV * D * 4 / ms / 1e6
            rows.append(row)
    return rows


def bench_mlp(threads: int, repeats: int) -> list[dict]:
    from ext import mlp as M

    rng = np.random.default_rng(1)
    wg = rng.standard_normal((IM, DM), dtype=np.float32) * 0.03
    wu = rng.standard_normal((IM, DM), dtype=np.float32) * 0.03
    wd = rng.standard_normal((IM, DM), dtype=np.float32) * 0.03
    ws = M.MLPWorkspace(128, IM)
    rows = []
    for T in (1, 128):
        x = rng.standard_normal((T, DM), dtype=np.float32)
        out = np.empty((T, DM), np.float32)
        g, u = np.empty((T, IM), np.float32), np.empty((T, IM), np.float32)
        gflop = 3 * 2.0 * T * DM * IM / 1e9

        def gemms(x=x, g=g, u=u, out=out):
            if x.shape[0] == 1:    # numpy's GEMV form for one token
                np.matmul(wg, x[0], out=g[0])
                np.matmul(wu, x[0], out=u[0])
                np.matmul(wd.T, g[0], out=out[0])
            else:
                np.matmul(x, wg.T, out=g)
                np.matmul(x, wu.T, out=u)
                np.matmul(g, wd, out=out)

        timed = time_ms({"gemms": gemms, "numpy": lambda x=x: numpy_mlp(x, wg, wu, wd),
                         "mlp": lambda x=x, out=out: M.mlp(x, wg, wu, wd, out, ws, num_threads=threads)},
                        repeats * 3, settle_s=0.005)   # settled: the other pool's threads asleep
        (ceil_ms, ceil_min), (np_ms, np_min), (ms, ms_min) = timed["gemms"], timed["numpy"], timed["mlp"]
        M.mlp(x, wg, wu, wd, out, ws, num_threads=threads)
        rows.append({"kernel": "mlp", "T": T, "ms": ms, "ms_min": ms_min, "gflops": gflop / ms * 1e3,
                     "numpy_ms": np_ms, "numpy_ms_min": np_min, "numpy_gflops": gflop / np_ms * 1e3,
                     "speedup_vs_numpy": np_ms / ms, "gemm_ceiling_ms": ceil_ms,
                     "gemm_ceiling_ms_min": ceil_min, "gemm_ceiling_gflops": gflop / ceil_ms * 1e3,
                     "fraction_of_gemm_ceiling": ceil_ms / ms,
                     "max_abs_diff_vs_numpy": float(np.abs(out - numpy_mlp(x, wg, wu, wd)).max())})
    return rows


def _bf16_pair(rng, shape, copies=1):
    """`copies` random bf16 matrices (uint16 bits) of `shape` and their exact float32 widenings."""
    from model_export.reader import bf16_to_float32

    bits = [rng.integers(0x3C00, 0x3D00, size=shape, dtype=np.uint16) ^ (rng.integers(0, 2, size=shape,
            dtype=np.uint16) << 15) for _ in range(copies)]   # +-[2^-7, 2^-6): weight-like scale
    return bits, [bf16_to_float32(b) for b in bits]


def bench_bf16(threads: int, repeats: int, quick: bool) -> list[dict]:
    """ext.linear on bf16 weights against numpy float32 on the same (widened) weights."""
    from ext import linear as B

    rng = np.random.default_rng(3)
    rows = []
    # Decode: (N, K) row-major weights (x @ w.T: gate/up, lm_head) and transposed (x @ w_t: down).
    cases = [("linear", (IM, DM), GEMV_COPIES), ("linear_t", (IM, DM), GEMV_COPIES)]
    if not quick:
        cases.append(("linear", (VOCAB, DM), 1))
    for op, shape, copies in cases:
        bits, f32 = _bf16_pair(rng, shape, copies)
        T, K, N = (1, shape[1], shape[0]) if op == "linear" else (1, shape[0], shape[1])
        x = rng.standard_normal((T, K), dtype=np.float32)
        out = np.empty((T, N), np.float32)
        kernel = B.linear if op == "linear" else B.linear_t
        if op == "linear":
            def numpy_f32(f32=f32, x=x, out=out):
                for w in f32:
                    np.matmul(w, x[0], out=out[0])
        else:
            def numpy_f32(f32=f32, x=x, out=out):
                for w in f32:
                    np.matmul(x[0], w, out=out[0])

        def bf16(nt, bits=bits, x=x, out=out, kernel=kernel):
            for w in bits:
                kernel(x, w, out, nt)

        # Settled: in a bf16 decode step no BLAS call runs between the GEMVs, so none spins.
        timed = time_ms({"numpy_f32": numpy_f32, "bf16": lambda: bf16(threads),
                         "bf16_1thread": lambda: bf16(1)}, repeats * 3, settle_s=0.005)
        n_el = copies * shape[0] * shape[1]
        (np_ms, np_min), (ms, ms_min), (ms1, _) = timed["numpy_f32"], timed["bf16"], timed["bf16_1thread"]
        bf16(threads)
        want = (x.astype(np.float64) @ f32[-1].T) if op == "linear" else (x.astype(np.float64) @ f32[-1])
        rows.append({"kernel": f"bf16_{op}", "T": T, "shape": list(shape), "copies": copies,
                     "ms": ms, "ms_min": ms_min, "bf16_gb_per_s": 2 * n_el / ms / 1e6,
                     "ms_1thread": ms1, "bf16_gb_per_s_1thread": 2 * n_el / ms1 / 1e6,
                     "numpy_f32_ms": np_ms, "numpy_f32_ms_min": np_min,
                     "numpy_f32_gb_per_s": 4 * n_el / np_ms / 1e6, "speedup_vs_numpy_f32": np_ms / ms,
                     "max_rel_err_vs_f64": float(np.abs(out - want).max() / max(1.0, np.abs(want).max()))})
        del bits, f32
    # Prefill: T=128 GEMMs, bf16 through widened blocks + BLAS vs numpy's float32 GEMM.
    T = 128
    for op, shape in (("linear", (IM, DM)), ("linear_t", (IM, DM))):
        (bits,), (f32,) = _bf16_pair(rng, shape)
        K, N = (shape[1], shape[0]) if op == "linear" else shape
        x = rng.standard_normal((T, K), dtype=np.float32)
        out, ref = np.empty((T, N), np.float32), np.empty((T, N), np.float32)
        kernel = B.linear if op == "linear" else B.linear_t
        wf = f32.T if op == "linear" else f32
        fns = {"numpy_f32": lambda x=x, wf=wf, ref=ref: np.matmul(x, wf, out=ref),
               "bf16": lambda x=x, bits=bits, out=out, kernel=kernel: kernel(x, bits, out, threads)}
        timed = time_ms(fns, repeats * 3, settle_s=0.005)
        gflop = 2.0 * T * K * N / 1e9
        (np_ms, np_min), (ms, ms_min) = timed["numpy_f32"], timed["bf16"]
        rows.append({"kernel": f"bf16_{op}", "T": T, "shape": list(shape), "copies": 1,
                     "ms": ms, "ms_min": ms_min, "gflops": gflop / ms * 1e3,
                     "numpy_f32_ms": np_ms, "numpy_f32_ms_min": np_min,
                     "numpy_f32_gflops": gflop / np_ms * 1e3, "gflops_ratio_vs_numpy_f32": np_ms / ms,
                     "max_rel_err_vs_numpy_f32": float(np.abs(out - ref).max()
                                                       / max(1.0, np.abs(ref).max()))})
    return rows


def probe_interference(threads: int, repeats: int) -> dict:
    """GEMM (128 x 1024 x 3072) alone vs right after a prange kernel, and the converse, in this process.

    The four timings are interleaved round by round, so load from other processes on a shared
    machine hits all of them alike; medians over the rounds.
    """
    from ext import attention as A
    from ext import linear as L

    rng = np.random.default_rng(2)
    x = rng.standard_normal((128, DM), dtype=np.float32)
    w = rng.standard_normal((IM, DM), dtype=np.float32)
    y = np.empty((128, IM), np.float32)
    q = rng.standard_normal((PROBE_T, H, D), dtype=np.float32)
    kv = rng.standard_normal((PROBE_T, HKV, D), dtype=np.float32)
    o = np.empty_like(q)
    gflop = 2.0 * 128 * DM * IM / 1e9

    def gemm():
        np.matmul(x, w.T, out=y)

    def ours():
        L.linear(x, w, y, threads)

    def prange_kernel():
        A.attention(q, kv, kv, o, 0, 0, D ** -0.5, num_threads=threads)

    def after(before, fn):
        before()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    pairs = {"gemm_alone": (gemm, gemm), "gemm_after_prange": (prange_kernel, gemm),
             "ours_alone": (ours, ours), "ours_after_prange": (prange_kernel, ours),
             "prange_alone": (prange_kernel, prange_kernel), "prange_after_gemm": (gemm, prange_kernel)}
    for before, fn in pairs.values():
        after(before, fn)
    times = {name: [] for name in pairs}
    for _ in range(repeats * 2):
        for name, (before, fn) in pairs.items():
            times[name].append(after(before, fn))
    ms = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    return {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY",
                                              f"(unset; GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')})"),
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT", "(unset: 28)"),
            "gemm_alone_gflops": gflop / ms["gemm_alone"] * 1e3,
            "gemm_after_prange_gflops": gflop / ms["gemm_after_prange"] * 1e3,
            "ours_alone_gflops": gflop / ms["ours_alone"] * 1e3,
            "ours_after_prange_gflops": gflop / ms["ours_after_prange"] * 1e3,
            "prange_alone_ms": ms["prange_alone"], "prange_after_gemm_ms": ms["prange_after_gemm"]}


def run_probe(policy: str, threads: int, repeats: int, blas_timeout: str) -> dict:
    """probe_interference in a fresh process with the given OMP_WAIT_POLICY and OpenBLAS timeout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    # Read when OpenBLAS loads: idle BLAS threads spin for 2^n cycles, then sleep.
    env["OPENBLAS_THREAD_TIMEOUT"] = blas_timeout
    cmd = [sys.executable, "-m", "pipeline.study.kernels_bench", "--threads", str(threads),
           "--repeats", str(repeats), "--probe", policy]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def print_table(result: dict) -> None:
    print(f"threads={result['threads']}  blas={result['blas']}")
    print(f"{'kernel':<10}{'algo':<16}{'T':>6}{'S':>6}{'ms':>10}{'min ms':>9}{'GFLOP/s':>9}"
          f"{'numpy ms':>10}{'np GF/s':>9}{'x numpy':>9}  note")
    for r in result.get("attention", []) + result.get("mlp", []):
        note = ""
        if "kv_gb_per_s" in r:
            note = f"KV read {r['kv_gb_per_s']:.1f} GB/s"
        if "fraction_of_gemm_ceiling" in r:
            note = (f"GEMM ceiling {r['gemm_ceiling_gflops']:.1f} GF/s, "
                    f"fraction {r['fraction_of_gemm_ceiling']:.2f}")
        print(f"{r['kernel']:<10}{r.get('algo', ''):<16}{r['T']:>6}{r.get('S', ''):>6}{r['ms']:>10.3f}"
              f"{r['ms_min']:>9.3f}{r['gflops']:>9.1f}{r['numpy_ms']:>10.3f}{r['numpy_gflops']:>9.1f}"
              f"{r['speedup_vs_numpy']:>9.2f}  {note}")
    if result.get("bf16"):
        print("bf16 weights (ext.linear) vs numpy float32 on the same weights; GEMV: GB/s of weights read")
        for r in result["bf16"]:
            what = f"{r['kernel']:<16}T={r['T']:<4}{'x'.join(map(str, r['shape'])):>12} x{r['copies']:<3}"
            if r["T"] == 1:
                print(f"  {what} bf16 {r['ms']:8.3f} ms {r['bf16_gb_per_s']:6.1f} GB/s (1 thread "
                      f"{r['bf16_gb_per_s_1thread']:5.1f}) | numpy f32 {r['numpy_f32_ms']:8.3f} ms "
                      f"{r['numpy_f32_gb_per_s']:6.1f} GB/s | speed-up {r['speedup_vs_numpy_f32']:.2f}")
            else:
                print(f"  {what} bf16 {r['ms']:8.3f} ms {r['gflops']:6.1f} GF/s | numpy f32 "
                      f"{r['numpy_f32_ms']:8.3f} ms {r['numpy_f32_gflops']:6.1f} GF/s | ratio "
                      f"{r['gflops_ratio_vs_numpy_f32']:.2f}")
    if not result.get("interference"):
        return
    print(f"OpenMP/BLAS interference (GEMM 128x1024x3072; prange = attention T=S={PROBE_T}; medians of "
          "interleaved rounds):")
    for p in result["interference"]:
        label = (f"OMP_WAIT_POLICY={p['omp_wait_policy']}, "
                 f"OPENBLAS_THREAD_TIMEOUT={p['openblas_thread_timeout']}")
        print(f"  {label:<60} GEMM alone {p['gemm_alone_gflops']:7.1f} GF/s, after prange "
              f"{p['gemm_after_prange_gflops']:7.1f} GF/s | ext.linear GEMM alone "
              f"{p['ours_alone_gflops']:7.1f}, after prange {p['ours_after_prange_gflops']:7.1f}"
              f" | prange alone {p['prange_alone_ms']:.3f} ms, "
              f"after GEMM {p['prange_after_gemm_ms']:.3f} ms")


def write_json(path: Path, data: dict) -> None:
    """Atomic: a reader sees the old file or the complete new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="BLAS and OpenMP threads")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no T=S=4096 prefill")
    ap.add_argument("--repeats", type=int, help="timed repeats per measurement (median reported)")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, metavar="PART",
                    help=f"run only these parts: {', '.join(PARTS)} (default: all)")
    ap.add_argument("--probe", choices=POLICIES, help=argparse.SUPPRESS)  # internal: one interference run
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)

    from threadpoolctl import threadpool_limits

    from pipeline.engine.threads import blas_info

    # numpy with its own threads; ext.linear's GEMM sets BLAS to 1 thread for its own calls.
    blas_limits = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841 (kept alive)
    if args.probe:
        print(json.dumps(probe_interference(args.threads, repeats)))
        return 0

    result = {"threads": args.threads, "repeats": repeats, "quick": args.quick,
              "shapes": {"H": H, "Hkv": HKV, "D": D, "d": DM, "I": IM},
              "blas": [f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)"
                       for b in blas_info()],
              "parts": list(args.only)}
    if "attention" in args.only:
        result["attention"] = bench_attention(args.threads, repeats, args.quick)
    if "mlp" in args.only:
        result["mlp"] = bench_mlp(args.threads, repeats)
    if "bf16" in args.only:
        result["bf16"] = bench_bf16(args.threads, repeats, args.quick)
    if "interference" in args.only:
        result["interference"] = [run_probe(p, args.threads, repeats, t) for p, t in PROBES]
    result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print_table(result)
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
