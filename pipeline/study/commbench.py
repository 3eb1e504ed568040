"""MPI latency and bandwidth of this machine: a ping-pong and an Allreduce sweep, fitted to alpha-beta.

    mpiexec -n P python -m mpi4py -m pipeline commbench --out results/comm.json

ping-pong: rank 0 and rank 1 bounce a message of n bytes (8 B .. 16 MB) with Send/Recv on
    preallocated buffers; one-way time = round trip / 2. Other ranks wait.
Allreduce: every rank, in place (MPI.IN_PLACE) on a preallocated float32 buffer of n bytes
    (4 B .. 16 MB), as the engine calls it; each sample is the slowest rank's time.
Each size: a warm-up, then `--samples` samples of k back-to-back operations (k sized so a sample
takes ~`--sample-ms`), median per operation. Both sweeps are fitted to t(n) = a + b n by least
squares on relative residuals (sum ((a + b n_i) / t_i - 1)^2): plain least squares would let the
16 MB points decide everything and leave the latency a meaningless residual.
ping-pong gives the point-to-point alpha = a and beta = b (s/byte). For the Allreduce the fitted
(a, b) are also converted to per-message (alpha, beta) under the cost model's Allreduce formula
(recursive halving/doubling): t = 2 ceil(log2 P) alpha + 2 (P-1)/P n beta.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

from model_export.atomic import write_json_atomic
from pipeline.engine.machine import machine_facts

SCHEMA_VERSION = 1
PINGPONG_SIZES = [8 << i for i in range(22)]  # 8 B .. 16 MB
ALLREDUCE_SIZES = [4 << i for i in range(23)]  # 4 B .. 16 MB (float32 elements x 4)


def fit_alpha_beta(sizes: list[int] | np.ndarray, times: list[float] | np.ndarray) -> tuple[float, float]:
    """(a, b) of t = a + b n, least squares on relative residuals; both clamped to be >= 0.

    If the unconstrained fit makes one of them negative, that one is 0 and the other refitted.
    """
    n = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    A = np.stack([1.0 / t, n / t], axis=1)  # rows (1/t_i, n_i/t_i): residual (a + b n_i)/t_i - 1
    (a, b), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if a < 0:
        a, b = 0.0, float(np.sum(n / t) / np.sum((n / t) ** 2))
    elif b < 0:
        a, b = float(np.sum(1 / t) / np.sum((1 / t) ** 2)), 0.0
    return float(a), float(b)


def allreduce_alpha_beta(a: float, b: float, P: int) -> tuple[float, float]:
    """Per-message alpha, per-byte beta from an Allreduce fit t = a + b n at P ranks."""
    if P < 2:
        return a, b
    return a / (2 * math.ceil(math.log2(P))), b / (2 * (P - 1) / P)


def _per_op(comm: MPI.Comm, op, k: int) -> float:
    """Seconds per operation over k back-to-back calls; the slowest rank's."""
    comm.Barrier()
    t0 = MPI.Wtime()
    for _ in range(k):
        op()
    dt = (MPI.Wtime() - t0) / k
    return comm.allreduce(dt, op=MPI.MAX)


def _sweep(comm: MPI.Comm, sizes: list[int], make_op, samples: int, sample_s: float) -> list[float]:
    """Median seconds per op for each size; k per sample chosen (the same on all ranks) from a probe."""
    medians = []
    for n in sizes:
        op = make_op(n)
        probe = _per_op(comm, op, 1)  # also the warm-up
        probe = min(probe, _per_op(comm, op, 1))
        k = comm.bcast(max(1, min(10000, int(sample_s / max(probe, 1e-7)))), root=0)
        medians.append(statistics.median(_per_op(comm, op, k) for _ in range(samples)))
    return medians


def pingpong(comm: MPI.Comm, sizes: list[int], samples: int, sample_s: float) -> dict:
    """One-way time between ranks 0 and 1 (half a round trip)."""
    buf = np.zeros(max(sizes), np.uint8)
    rank = comm.Get_rank()

    def make_op(n: int):
        view = buf[:n]
        if rank == 0:
            def op() -> None:
                comm.Send(view, dest=1, tag=7)
                comm.Recv(view, source=1, tag=7)
        elif rank == 1:
            def op() -> None:
                comm.Recv(view, source=0, tag=7)
                comm.Send(view, dest=0, tag=7)
        else:
            def op() -> None:
                pass
        return op

    round_trip = _sweep(comm, sizes, make_op, samples, sample_s)
    one_way = [t / 2 for t in round_trip]
    a, b = fit_alpha_beta(sizes, one_way)
    return {"sizes_bytes": sizes, "median_s": one_way,
            "bandwidth_gb_s": [n / t / 1e9 for n, t in zip(sizes, one_way, strict=True)],
            "alpha_s": a, "beta_s_per_byte": b, "fit_bandwidth_gb_s": (1 / b / 1e9) if b > 0 else None}


def allreduce(comm: MPI.Comm, sizes: list[int], samples: int, sample_s: float) -> dict:
    """In-place float32 Allreduce (sum) of n bytes on every rank."""
    buf = np.zeros(max(sizes) // 4, np.float32)  # zeros: repeated sums stay finite (and exact)

    def make_op(n: int):
        view = buf[: n // 4]
        return lambda: comm.Allreduce(MPI.IN_PLACE, view, op=MPI.SUM)

    times = _sweep(comm, sizes, make_op, samples, sample_s)
    P = comm.Get_size()
    a, b = fit_alpha_beta(sizes, times)
    alpha, beta = allreduce_alpha_beta(a, b, P)
    return {"sizes_bytes": sizes, "median_s": times,
            "bus_bandwidth_gb_s": [2 * (P - 1) / P * n / t / 1e9 for n, t in zip(sizes, times, strict=True)],
            "fit_a_s": a, "fit_b_s_per_byte": b, "alpha_s": alpha, "beta_s_per_byte": beta,
            "formula": "t = 2 ceil(log2 P) alpha + 2 (P-1)/P n beta"}


def environment(comm: MPI.Comm) -> dict:
    return machine_facts(comm.Get_size(), 1)


def run(comm: MPI.Comm, samples: int = 7, sample_s: float = 0.005,
        max_bytes: int = 16 << 20) -> dict | None:
    """Both sweeps; the result on rank 0 (None elsewhere). P = 1 gives nulls: nothing to measure."""
    t0 = time.perf_counter()
    P = comm.Get_size()
    pp_sizes = [n for n in PINGPONG_SIZES if n <= max_bytes]
    ar_sizes = [n for n in ALLREDUCE_SIZES if n <= max_bytes]
    pp = pingpong(comm, pp_sizes, samples, sample_s) if P > 1 else None
    ar = allreduce(comm, ar_sizes, samples, sample_s) if P > 1 else None
    env = environment(comm)
    if comm.Get_rank():
        return None
    return {"schema_version": SCHEMA_VERSION, "nranks": P, "environment": env,
            "samples": samples, "sample_s": sample_s, "pingpong": pp, "allreduce": ar,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result JSON (written atomically by rank 0)")
    p.add_argument("--samples", type=int, default=7, help="samples per message size (median)")
    p.add_argument("--sample-ms", type=float, default=5.0, help="target duration of one sample")
    p.add_argument("--max-bytes", type=int, default=16 << 20, help="largest message (default 16 MB)")
    args = p.parse_args(argv)
    if args.samples < 1 or args.sample_ms <= 0:
        p.error("--samples must be >= 1 and --sample-ms > 0")
    result = run(MPI.COMM_WORLD, args.samples, args.sample_ms / 1e3, args.max_bytes)
    if result is None:
        return
    write_json_atomic(args.out, result)
    msg = f"commbench P={result['nranks']} in {result['seconds']:.1f} s"
    if result["pingpong"]:
        pp, ar = result["pingpong"], result["allreduce"]
        msg += (f": ping-pong alpha {pp['alpha_s'] * 1e6:.2f} us, {pp['fit_bandwidth_gb_s'] or 0:.2f} GB/s; "
                f"allreduce alpha {ar['alpha_s'] * 1e6:.2f} us, beta {ar['beta_s_per_byte'] * 1e9:.3f} ns/B")
    print(msg, file=sys.stderr)


if __name__ == "__main__":
    main()
