"""The cost model meets the network: the MPI sweep and a few held-out cells, on shared memory or
across emulated nodes at one link speed, in one JSON.

    python -m pipeline netcal --export EXPORT --link shm --cells headwise_standard_np2_p128 ... \
        --out results/network/shm.json
    python -m pipeline netcal --export EXPORT --link 1 --nodes 2 --cells ... --out results/network/link1.json

`--link shm` runs every job on this machine with the plain launcher (`--mpiexec`); `--link G`
brings up an emulated cluster of `--nodes` nodes whose links are capped at G Gb/s (its own
namespace prefix, so the workflow's cluster is left alone), runs the jobs across it and takes it
down (also on failure). Each link speed records:

- `comm`: the ping-pong/Allreduce sweep (pipeline.study.commbench) at 2 ranks, one per node;
- `overhead`: decode of a 28-layer Qwen3 of hidden 64 (its weights are negligible) at P=1 and P=2
  (and, on shared memory, of its 2-layer sibling at P=1), one thread per rank: the fixed cost per
  step and per layer of the engine (Python, kernel launches) and, at P=2, the cost of its
  collectives in situ (the cost model's fixed terms; the per-layer split once, on shared memory);
- `calibration`: the single-rank cells measured in the same session (the machine's load drifts
  between the workflow's matrix and this rule: rates from the same session are comparable);
- `comm_calibration`: multi-rank cells that are not held out (`--comm-cells`, one head-wise and
  one sequence cell): the engine's time per collective in situ per message-size class, its
  waiting per second of compute, and a rank's speed among others, at the granularity of the real
  model (the tiny model's collectives, with almost no compute between them, see less of the
  scheduler);
- `runs`: the bench JSONs of the held-out cells (never used in calibration).

Where the emulated cluster cannot run (not root, no namespaces) the JSON holds `skipped` with
the reason instead, and the report prints that line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model_export.atomic import write_json_atomic
from pipeline.cells import CellId

SCHEMA_VERSION = 1
TINY_PRESET = "tiny"  # hidden 64, vocab 512: a decode step is almost all fixed cost
OVERHEAD_LAYERS = (2, 28)  # two depths separate the per-step from the per-layer cost
OVERHEAD_GEN = 32
OVERHEAD_PROMPT = 16
OVERHEAD_ITERS = 7  # tiny runs are cheap; more iterations steady the median on a loaded machine
PREFIX = "qpnet"  # namespace prefix of the calibration cluster (the workflow's is "qp")


def tiny_export(layers: int, workdir: Path) -> Path:
    """A float32 export of the tiny preset with `layers` layers (weights seeded, negligible)."""
    from model_export import config as mconfig
    from model_export.export import export_checkpoint
    from model_export.synthetic import write_checkpoint

    name = f"{TINY_PRESET}-l{layers}"
    # A preset only for this process: the synthetic writer takes presets by name.
    mconfig.PRESETS.setdefault(name, {**mconfig.PRESETS[TINY_PRESET], "num_hidden_layers": layers})
    ckpt, out = workdir / f"{name}-ckpt", workdir / f"{name}-export"
    if not (out / "manifest.json").exists():
        write_checkpoint(name, ckpt, seed=0, dtype="float32", force=True)
        export_checkpoint(ckpt, out, force=True, dtype="float32", progress=lambda _m: None)
    return out


def bench_argv(export: Path, cell: CellId, gen_len: int, iters: int, threads: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "mpi4py", "-m", "pipeline", "bench", "--export", str(export),
            "--parallel-strategy", cell.strategy, "--attention-algo", cell.algo,
            "--prompt-len", str(cell.prompt_len), "--gen-len", str(gen_len), "--iters", str(iters),
            "--warmup", "1", "--threads", str(threads), "--out", str(out)]


class Runner:
    """Runs MPI jobs with P ranks: the plain launcher, or across the emulated cluster."""

    def __init__(self, mpiexec: list[str], log) -> None:
        self.mpiexec, self.log = mpiexec, log

    def run(self, nranks: int, argv: list[str], timeout: float) -> None:
        cmd = [*self.mpiexec, "-n", str(nranks), *argv]
        self.log(f"$ {shlex.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        self.log(proc.stderr.strip()[-2000:])
        if proc.returncode:
            raise RuntimeError(f"`{shlex.join(cmd[:6])} ...` failed (exit {proc.returncode})")


def overhead(runner: Runner, workdir: Path, timeout: float, rounds: int, depths: tuple[int, ...]) -> dict:
    """Decode of the tiny model: s per step at P=1 for both depths and at P=2 for the deeper, in
    `rounds` alternating rounds (the load of this shared machine drifts; a ratio within a round
    is what holds)."""
    out: dict = {"preset": TINY_PRESET, "prompt_len": OVERHEAD_PROMPT, "gen_len": OVERHEAD_GEN, "runs": []}
    jobs = [(layers, 1) for layers in depths] + [(depths[-1], 2)]
    for rnd in range(rounds):
        for layers, P in jobs if rnd % 2 == 0 else jobs[::-1]:
            export = tiny_export(layers, workdir)
            cell = CellId("headwise", "standard", P, OVERHEAD_PROMPT)
            path = workdir / f"overhead_l{layers}_np{P}.json"
            # One thread per rank: the fixed cost is per call, and a 2-thread team on a loaded
            # machine adds the wait for both threads at every kernel (docs/design-notes.md#fixed-cost).
            runner.run(P, bench_argv(export, cell, OVERHEAD_GEN, OVERHEAD_ITERS, P, path), timeout)
            run = json.loads(path.read_text())
            dec, pre = run["decode"], run["prefill"]
            out["runs"].append({"round": rnd, "layers": layers, "nranks": P,
                                "hosts": run["environment"].get("hosts"),
                                "decode_step_s": dec["median_s"] / OVERHEAD_GEN,
                                # its weights' bytes read once, beside the steps: what of a step is
                                # bandwidth (5.5 MB at 28 layers: out of L2), not a fixed cost
                                "weights_read_step_s": statistics.median(dec["weights_stream_s"]),
                                "weights_bytes": dec["weights_stream_bytes"],
                                "decode_transfer_step_s": (dec.get("transfer_s") or 0) / OVERHEAD_GEN,
                                "decode_wait_step_s": (dec.get("wait_s") or 0) / OVERHEAD_GEN,
                                "prefill_s": pre["median_s"],
                                "prefill_transfer_s": pre.get("transfer_s") or 0})
    return out


def bench_cells(runner: Runner, args: argparse.Namespace, names: list[str], work: Path,
                result: dict, key: str, threads: int | None = None) -> None:
    """Bench each cell into result[key]; a failed cell is listed in result["failed"], the rest go on."""
    for name in names:
        cell = CellId.parse(name)
        path = work / f"{name}.json"
        try:
            runner.run(cell.nranks, bench_argv(Path(args.export), cell, args.gen_len, args.iters,
                                               threads or args.threads, path), args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as e:  # the other cells still count
            result.setdefault("failed", []).append({"cell": name, "reason": str(e)})
            continue
        result[key].append(json.loads(path.read_text()))


def calibration_cells(cells: list[str]) -> list[str]:
    """The single-rank cells of the held-out cells' algorithms and prompt lengths (head-wise: at
    one rank every strategy is the same computation)."""
    return sorted({CellId("headwise", c.algo, 1, c.prompt_len).name for c in map(CellId.parse, cells)})


def measure(args: argparse.Namespace, mpiexec: list[str], log) -> dict:
    """Everything of one link speed (or shared memory) with the given launcher, in one session:
    the sweep, the tiny model, the single-rank calibration cells, then the held-out cells."""
    runner = Runner(mpiexec, log)
    work = Path(tempfile.mkdtemp(prefix="netcal-", dir=args.workdir))
    comm_path = work / "comm.json"
    runner.run(2, [sys.executable, "-m", "mpi4py", "-m", "pipeline", "commbench", "--out", str(comm_path),
                   "--max-bytes", str(args.max_bytes), "--samples", str(args.samples)], args.timeout)
    result = {"comm": json.loads(comm_path.read_text()),
              "overhead": overhead(runner, Path(args.workdir), args.timeout, args.rounds,
                                   OVERHEAD_LAYERS if args.link == "shm" else OVERHEAD_LAYERS[-1:]),
              "calibration": [], "runs": []}
    # One thread per rank, like the held-out P=2 cells: on a loaded machine a 2-thread team runs
    # several times slower than two 1-thread ranks (docs/design-notes.md#network-calibration).
    bench_cells(runner, args, calibration_cells(args.cells), work, result, "calibration", threads=1)
    result["comm_calibration"] = []
    bench_cells(runner, args, [c for c in args.comm_cells if c not in args.cells], work, result,
                "comm_calibration")
    bench_cells(runner, args, args.cells, work, result, "runs")
    return result


def across_cluster(args: argparse.Namespace, log) -> dict:
    """Bring the calibration cluster up, measure across it, take it down (whatever happens)."""
    from pipeline.study import cluster as cl

    c = cl.Cluster(args.nodes, float(args.link), args.prefix)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # Snakemake ends a job with SIGTERM: still take it down
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    try:
        cl.up(c)
        return measure(args, [sys.executable, "-m", "pipeline", "cluster", "--prefix", args.prefix,
                              "mpiexec"], log)
    finally:
        cl.down(args.prefix)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", required=True, help="export of the held-out cells' model")
    p.add_argument("--link", required=True, help="'shm' (this machine) or a link cap in Gb/s")
    p.add_argument("--nodes", type=int, default=2, help="emulated nodes (with a link cap)")
    p.add_argument("--cells", nargs="*", default=[], help="held-out cells, e.g. headwise_standard_np2_p128")
    # One cell per family of the held-out cells: a rank's speed among others and the cost per call
    # in situ are medians over these, and one sample of head-wise P=2 decode swung by x1.4 between
    # runs minutes apart (docs/design-notes.md#network-calibration).
    p.add_argument("--comm-cells", nargs="*",
                   default=["headwise_online_softmax_np2_p128", "sequence_online_softmax_np2_p128"],
                   help="multi-rank cells, not held out, that calibrate the costs in situ and a rank's speed")
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="cores of each job (as bench --threads)")
    p.add_argument("--samples", type=int, default=5, help="commbench samples per size")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the tiny-model runs")
    p.add_argument("--max-bytes", type=int, default=4 << 20, help="largest commbench message")
    p.add_argument("--mpiexec", default="mpiexec", help="launcher for --link shm")
    p.add_argument("--prefix", default=PREFIX, help="namespace prefix of the calibration cluster")
    p.add_argument("--timeout", type=float, default=900, help="seconds per MPI job")
    p.add_argument("--workdir", default="results/work/netcal", help="scratch (tiny exports, raw JSONs)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    for name in args.cells + args.comm_cells:
        try:
            CellId.parse(name)
        except ValueError as e:
            p.error(f"--cells: {e}")
    if args.link != "shm":
        try:
            if float(args.link) <= 0:
                raise ValueError
        except ValueError:
            p.error(f"--link must be 'shm' or a positive Gb/s, not {args.link!r}")
    if args.nodes < 2:
        p.error("--nodes must be >= 2 (the point is to cross the network)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    record = {"schema_version": SCHEMA_VERSION, "link": args.link, "cells": args.cells,
              "nodes": 1 if args.link == "shm" else args.nodes,
              "link_gbit": None if args.link == "shm" else float(args.link), "skipped": None}

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.link == "shm":
        record.update(measure(args, shlex.split(args.mpiexec), log))
    else:
        from pipeline.study.cluster import ClusterError, check_host

        try:
            check_host()
        except ClusterError as e:  # not root, no ip/tc: say why, the report prints it
            record["skipped"] = f"emulated cluster unavailable: {e}"
        if record["skipped"] is None:
            record.update(across_cluster(args, log))
    record["seconds"] = time.perf_counter() - t0
    write_json_atomic(args.out, record)
    log(f"netcal {args.link}: {record['skipped'] or 'measured'} in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
