"""Benchmark one cell: strategy x attention algorithm x ranks x prompt length.

    mpiexec -n P python -m mpi4py -m pipeline bench --export DIR --parallel-strategy headwise \
        --attention-algo online_softmax --prompt-len 128 --gen-len 32 --iters 3 --warmup 1 --out F.json

prefill: one forward of prompt_len tokens into an empty cache; decode: gen_len greedy steps after
it. A barrier starts each timed region; each time is the slowest rank's. Warm-up is excluded.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from model_export.atomic import write_json_atomic
from model_export.config import Qwen3Config
from model_export.dtypes import itemsize
from model_export.reader import Export, open_export
from pipeline.cells import MANIFEST_DTYPES, CellId
from pipeline.engine.comm import Comm
from pipeline.engine.launch import threads_per_rank, validated
from pipeline.engine.machine import (
    fold_into_huge_pages,
    huge_page_share,
    machine_facts,
    placement,
    shared_cpus,
    topology,
)
from pipeline.engine.model import WEIGHTS, Qwen3Engine, check_job
from pipeline.engine.prompts import random_prompt
from pipeline.engine.strategies import ALGORITHMS, STRATEGIES
from pipeline.engine.strategies.layer import MICRO_BATCH
from pipeline.engine.strategies.sequence import LAYOUTS
from pipeline.engine.threads import blas_info, set_threads
from pipeline.study.lowprec import MIN_STEPS, measures, teacher_forced_logits
from pipeline.study.refcache import reference_key, reference_run
from pipeline.study.roofline import measure_ceilings, roofline_fractions, stream_fractions
from pipeline.study.stats import logits_digest, timings, top1_margin

SCHEMA_VERSION = 1
# a read of the weights after every STREAM_EVERY-th decode step (and after the last, if none):
# the median of an iteration's reads is its streaming ceiling, sampled across its decode steps
STREAM_EVERY = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="export directory (python -m pipeline export)")
    p.add_argument("--parallel-strategy", required=True, metavar="LAYOUT",
                   help=f"one of {sorted(STRATEGIES)}, or two levels such as layer2.headwise2")
    p.add_argument("--attention-algo", required=True, help=f"one of {list(ALGORITHMS)}")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sequence-layout", default="zigzag", choices=LAYOUTS,
                   help="token split of the sequence strategy: zigzag balances causal attention")
    p.add_argument("--micro-batch", type=int, default=MICRO_BATCH,
                   help="prefill tokens per pipeline step of the layer strategy")
    p.add_argument("--threads", type=int, default=None,
                   help="cores for the whole job; each rank gets max(1, threads // P) (default: all)")
    p.add_argument("--block", type=int, default=64, help="online-softmax KV block size")
    p.add_argument("--weights", choices=WEIGHTS, default="map",
                   help="map: the export's memory map, no copy; copy: each rank's weights copied "
                        "into anonymous 2 MiB pages (twice the resident memory; "
                        "docs/design-notes.md#weight-copies)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt token ids")
    p.add_argument("--out", required=True, help="result JSON (written atomically by rank 0)")
    p.add_argument("--reference-export", default=None, metavar="DIR",
                   help="float32 export of the same checkpoint: record the logits' NMSE, KL and "
                        f"top-1 agreement against it over max(gen-len, {MIN_STEPS}) teacher-forced steps")
    p.add_argument("--reference-cache", default=None, metavar="DIR",
                   help="keep the float32 reference run here and reuse it in later cells of the same "
                        "reference export, prompt, steps, algorithm and engine code (study/refcache.py)")
    args = p.parse_args(argv)
    for name in ("prompt_len", "gen_len", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def timed_run(engine: Qwen3Engine, comm: Comm, prompt: np.ndarray, gen_len: int) -> dict:
    """One prefill + gen_len decode steps; this rank's seconds and comm books for each phase."""
    engine.reset()
    comm.barrier()
    comm.reset_counters()
    t0 = MPI.Wtime()
    logits = engine.prefill(prompt)
    prefill_s = MPI.Wtime() - t0
    prefill_comm = (comm.seconds, comm.bytes_sent)
    prefill_split = comm.arrival_split()
    tokens = [int(np.argmax(logits))]
    prefill_digest = logits_digest(logits)
    margins = [top1_margin(logits)]
    comm.barrier()
    comm.reset_counters()
    steps = np.zeros(gen_len)
    reads: list[float] = []
    in_order: list[float] = []
    for i in range(gen_len):
        t = MPI.Wtime()
        logits = engine.decode(tokens[-1])
        tokens.append(int(np.argmax(logits)))
        steps[i] = MPI.Wtime() - t
        margins.append(top1_margin(logits))  # after the step's clock: not in the timing
        if (i + 1) % STREAM_EVERY == 0 or (i + 1 == gen_len < STREAM_EVERY):
            reads.append(weights_read(engine, comm))
            in_order.append(weights_read_in_order(engine, comm) if engine.strategy.comms.stages.size > 1
                            else reads[-1])  # one stage: the step's order is every rank at once
    stream_s = float(np.median(reads))
    return dict(prefill_s=prefill_s, steps=steps, tokens=tokens, margins=margins, stream_s=stream_s,
                in_order_s=float(np.median(in_order)),
                prefill_digest=prefill_digest, final_digest=logits_digest(logits), prefill_comm=prefill_comm,
                decode_comm=(comm.seconds, comm.bytes_sent), prefill_split=prefill_split,
                decode_split=comm.arrival_split())


def weights_read(engine: Qwen3Engine, comm: Comm) -> float:
    """Seconds this rank takes to read its weights' bytes once with its threads, every rank at
    once: the streaming ceiling of the decode steps around it, on the same memory and between
    them, so both see the machine in the same state (a shared host's bandwidth moves by x1.5
    within minutes; docs/design-notes.md#stream-ceiling). Outside the steps' clocks."""
    comm.barrier()
    t = MPI.Wtime()
    engine.read_weights()
    return MPI.Wtime() - t


def weights_read_in_order(engine: Qwen3Engine, comm: Comm) -> float:
    """Seconds to read the job's weights in a decode step's order, the same on every rank: each
    pipeline stage reads its layers in turn while the others wait (in MPI, as they wait in a
    step), then every rank reads its lm_head rows at once (the vocabulary-parallel head). The
    ceiling of the layout itself, where weights_read is the node's. Outside the steps' clocks."""
    stages = engine.strategy.comms.stages
    seconds = np.zeros(stages.size + 1)  # per stage, then the head
    for s in range(stages.size):
        comm.barrier()
        if stages.rank == s:
            t = MPI.Wtime()
            engine.read_weights("layers")
            seconds[s] = MPI.Wtime() - t
    comm.barrier()
    t = MPI.Wtime()
    engine.read_weights("head")
    seconds[-1] = MPI.Wtime() - t
    comm.comm.Allreduce(MPI.IN_PLACE, seconds, op=MPI.MAX)  # each stage's slowest rank, the head's
    return float(seconds.sum())


def time_split(comm: Comm, runs: list[dict]) -> dict[str, dict]:
    """Per phase and rank: median compute, transfer and waiting seconds (on rank 0; {} elsewhere).

    transfer: inside MPI once every rank has arrived; waiting: inside MPI before the last rank
    arrived (imbalance); compute: the rest of the rank's phase time.
    """
    local = np.array([[r["prefill_s"], *r["prefill_split"], r["steps"].sum(), *r["decode_split"]]
                      for r in runs])  # (iters, 6)
    ranks = comm.comm.gather(local, root=0) if comm.size > 1 else [local]
    if comm.rank:
        return {}
    split = {}
    for phase, col in (("prefill", 0), ("decode", 3)):
        parts = [(a[:, col] - a[:, col + 1] - a[:, col + 2], a[:, col + 1], a[:, col + 2]) for a in ranks]
        split[phase] = {name: [float(np.median(p[i])) for p in parts]
                        for i, name in enumerate(("compute_s", "transfer_s", "wait_s"))}
    return split


def comm_books(seconds: list[float], tokens: int, comm_s: list[float], bytes_sent: int) -> dict:
    """A phase's communication: median seconds inside MPI, the rest as compute, bytes per token."""
    med, comm_med = statistics.median(seconds), statistics.median(comm_s)
    return {"comm_s": comm_med, "compute_s": max(0.0, med - comm_med),
            "bytes_sent_per_token": bytes_sent / tokens}


def split_books(per_rank: dict[str, list[float]]) -> dict:
    """The phase's transfer and waiting seconds (the most of any rank) and every rank's split."""
    return {"transfer_s": max(per_rank["transfer_s"]), "wait_s": max(per_rank["wait_s"]),
            "per_rank": per_rank}


def environment(comm: Comm, threads: int) -> dict:
    return {**machine_facts(comm.size, threads), "blas": blas_info()}


def _kib_field(path: str, key: str) -> float:
    """A `key: N kB` line of a /proc file, in MB (0 where the file or the line is absent)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory_mb(attention_scratch_bytes: int = 0, weight_bytes: int = 0,
              export_path: str | os.PathLike | None = None) -> dict:
    """Peak resident set (VmHWM), private anonymous memory now (RssAnon; in 2 MiB pages: the decode
    stack's row copies, ext/hugepages.py, and numpy's large buffers), the attention
    kernels' largest working memory and the weights the rank multiplies with (from the engine), in MB;
    the share of the export's resident pages mapped as 2 MiB pages."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon, anon_huge = _kib_field("/proc/self/status", "RssAnon:"), \
        _kib_field("/proc/self/smaps_rollup", "AnonHugePages:")
    return {"peak_rss_mb": peak, "anon_mb": anon, "anon_huge_mb": anon_huge,
            "attention_scratch_mb": attention_scratch_bytes / 1e6,
            "weights_mb": weight_bytes / 1e6,
            "weights_in_2mib_pages": None if export_path is None else huge_page_share(export_path)}


def run(args: argparse.Namespace) -> dict | None:
    comm = Comm()
    threads = threads_per_rank(args.threads, comm.size)
    set_threads(threads)

    def setup() -> Export:
        export = open_export(args.export)
        check_job(export, args.parallel_strategy, args.attention_algo, comm.size, args.prompt_len,
                  args.gen_len)
        return export

    export = validated(comm, setup)
    folded = fold_weights(comm, export)
    reference = validated(comm, lambda: reference_export(args, export))
    cfg = export.cfg
    prompt = random_prompt(args.seed, cfg.vocab_size, args.prompt_len)
    steps = max(args.gen_len, MIN_STEPS) if reference is not None else args.gen_len

    def make_engine(e: Export) -> Qwen3Engine:
        return Qwen3Engine(e, args.parallel_strategy, args.attention_algo, comm, threads,
                           max_seq=args.prompt_len + steps + 1, block=args.block,
                           sequence_layout=args.sequence_layout, micro_batch=args.micro_batch,
                           weights=args.weights)

    engine = make_engine(export)
    runs = []
    for it in range(args.warmup + args.iters):
        r = timed_run(engine, comm, prompt, args.gen_len)
        if comm.rank == 0:
            kind = "warm-up" if it < args.warmup else "iter"
            print(f"[bench] {kind} {it + 1}/{args.warmup + args.iters}: prefill {r['prefill_s']:.3f} s, "
                  f"decode {r['steps'].sum():.3f} s", file=sys.stderr, flush=True)
        if it >= args.warmup:
            runs.append(r)
    result = summarise(args, comm, export, threads, prompt, runs, engine.attention_scratch_bytes,
                       engine.weight_bytes)
    ceilings = ceilings_on_rank0(comm, export.cfg, args.prompt_len, threads)
    if result is not None:
        result["memory"]["weights_refolded"] = {"before": folded[0], "after": folded[1]}
        result["roofline"] = roofline(export, args, result, ceilings)
    if result is not None:
        result["implementations"] = implementations(engine, args.prompt_len, threads)
    if reference is not None:  # after the timing: the float32 engine's memory is not in it
        low = low_precision(comm, args, reference, make_engine, engine, prompt, steps)
        if result is not None:
            result["low_precision"] = {"reference_export": os.path.abspath(args.reference_export), **low}
    return result


def fold_weights(comm: Comm, export: Export) -> tuple[float | None, float | None]:
    """One rank per node, before any rank maps the export, faults its files in as 2 MiB page-cache
    folios (re-reading them where the cache held small ones): every cell reads its weights alike
    whatever read the files before. The node's (before, after) share of 2 MiB pages."""
    node = comm.comm.Split_type(MPI.COMM_TYPE_SHARED)
    shares: tuple[float | None, float | None] = (None, None)
    if node.Get_rank() == 0:  # an error here aborts the job (python -m mpi4py), no rank hangs
        files = sorted(f for f in Path(export.path).iterdir() if f.is_file())
        shares = fold_into_huge_pages(files, export.path)
    node.Barrier()
    node.Free()
    return shares


def implementations(engine: Qwen3Engine, prompt_rows: int, threads: int) -> dict:
    """What multiplied each of rank 0's products (ext.linear.implementation: "onednn:<name>"
    with ":packed" on its packed copy, "gemv", "sgemm", ...) at the prompt's rows and at one
    token, and whether decode ran the layers in one call (ext.decode) or op by op."""
    from ext.linear import gemv_prefetch_bytes, implementation

    w = next(iter(engine.layers.values()))
    products = {"qkv": (w.wq, False), "o_proj": (w.wo_t, True), "gate_up": (w.w_gate, False),
                "down": (w.w_down_t, True)}
    out: dict = {"prefill_rows": prompt_rows,
                 "decode_layers": "one call" if engine.decode_stack is not None else "per op"}
    rows = bool(engine.row_copies)  # o_proj and down_proj also held as rows (linear_t's rows)
    for phase, T in (("prefill", prompt_rows), ("decode", 1)):
        out[phase] = {name: implementation(a.dtype, T, *(a.shape if tr else a.shape[::-1]), tr,
                                           threads, tr and rows)
                      for name, (a, tr) in products.items()}
    head = engine.lm_head  # (V_r, d), one row of activations in either phase
    out["lm_head"] = implementation(head.dtype, 1, head.shape[1], head.shape[0], False, threads)
    out["gemv_prefetch_bytes"] = gemv_prefetch_bytes(w.wq.dtype)  # its one-token rows kernel's
    return out


def reference_export(args: argparse.Namespace, export: Export) -> Export | None:
    """The float32 export --reference-export names, checked to be of the same model."""
    if args.reference_export is None:
        return None
    ref = open_export(args.reference_export)
    if ref.dtype_name != "float32":
        raise ValueError(f"--reference-export {ref.path}: holds {ref.dtype_name}, not float32")
    if ref.cfg != export.cfg:
        raise ValueError(f"--reference-export {ref.path}: another model than {export.path} (config differs)")
    return ref


def low_precision(comm: Comm, args: argparse.Namespace, reference: Export, make_engine, engine: Qwen3Engine,
                  prompt: np.ndarray, steps: int) -> dict | None:
    """NMSE, KL and top-1 of the engine's logits against the float32 engine's greedy run, the
    engine fed the float32 run's tokens (teacher forcing: one context for both at every step);
    the float32 run read from --reference-cache where an earlier cell left it (on rank 0)."""
    key = reference_key(reference.path, prompt, steps, args.attention_algo)
    cell = f"{args.parallel_strategy}_{args.attention_algo}_np{comm.size}"
    tokens, ref_logits, source = reference_run(
        comm, args.reference_cache, key, cell, prompt,
        lambda: make_engine(reference).generate(prompt, steps, keep_logits=True))
    logits = teacher_forced_logits(engine, prompt, tokens)  # collective
    return {**measures(logits, ref_logits), **source} if comm.rank == 0 else None


def ceilings_on_rank0(comm: Comm, cfg: Qwen3Config, prompt_len: int, threads: int) -> dict | None:
    """The machine's GEMM and streaming-GEMV ceilings, measured in this run with the job's cores.

    Rank 0 measures; the others wait on a polled Ibarrier that sleeps, because MPICH's blocking
    barrier busy-polls and would take a core from the measurement.
    """
    ceilings = None
    if comm.rank == 0:
        cores = min(os.cpu_count() or 1, comm.size * threads)
        set_threads(cores)
        ceilings = measure_ceilings(cfg, prompt_len, cores)
        set_threads(threads)
    if comm.size > 1:
        req = comm.comm.Ibarrier()
        while not req.Test():
            time.sleep(0.01)
    return ceilings


def roofline(export: Export, args: argparse.Namespace, result: dict, ceilings: dict) -> dict:
    """Prefill FLOP/s over the GEMM ceiling, decode bytes/s over the streaming bandwidth."""
    dtype_bytes = itemsize(export.dtype_name)
    fractions = roofline_fractions(export.cfg, ceilings, prompt_len=args.prompt_len, gen_len=args.gen_len,
                                   prefill_s=result["prefill"]["median_s"],
                                   decode_s=result["decode"]["median_s"], dtype_bytes=dtype_bytes)
    d = result["decode"]
    fractions["gemv_decode_fraction"] = fractions["decode_fraction"]  # against NumPy's GEMV set
    fractions.update(stream_fractions(export.cfg, dtype_bytes, args.prompt_len, args.gen_len, d["seconds"],
                                      d["weights_stream_s"], d["weights_stream_bytes"],
                                      d["weights_in_order_s"]))
    result["prefill"]["roofline_fraction"] = fractions["prefill_fraction"]
    result["decode"]["roofline_fraction"] = fractions["decode_fraction"]
    return {**fractions, "ceilings": ceilings}


def slowest_rank(comm: Comm, runs: list[dict]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Every timed region's slowest rank: (iters, 6) prefill s, decode s, prefill comm s, decode
    comm s, the median of its reads of the weights (weights_read) and of the reads in a step's
    order (weights_read_in_order); (iters, gen_len) decode steps;
    the bytes sent in the last iteration (prefill, decode)."""
    local = np.array([[r["prefill_s"], r["steps"].sum(), r["prefill_comm"][0], r["decode_comm"][0],
                       r["stream_s"], r["in_order_s"]] for r in runs])
    steps = np.array([r["steps"] for r in runs])  # (iters, gen_len)
    if comm.size > 1:
        comm.comm.Allreduce(MPI.IN_PLACE, local, op=MPI.MAX)
        comm.comm.Allreduce(MPI.IN_PLACE, steps, op=MPI.MAX)
    bytes_sent = (comm.comm.allreduce(runs[-1]["prefill_comm"][1], op=MPI.MAX),
                  comm.comm.allreduce(runs[-1]["decode_comm"][1], op=MPI.MAX))
    return local, steps, bytes_sent


def summarise(args: argparse.Namespace, comm: Comm, export: Export, threads: int, prompt: np.ndarray,
              runs: list[dict], attention_scratch_bytes: int = 0, weight_bytes: int = 0) -> dict | None:
    """Slowest rank per timed region, then statistics over iterations (on rank 0)."""
    local, steps, bytes_sent = slowest_rank(comm, runs)
    split = time_split(comm, runs)
    mem = comm.comm.gather(memory_mb(attention_scratch_bytes, weight_bytes, export.path), root=0)
    ranks = comm.comm.gather(placement(), root=0)  # ranks on other (emulated) nodes show here
    stream_bytes = comm.comm.allreduce(weight_bytes, op=MPI.SUM)  # what every rank's read took in
    if comm.rank:
        return None
    prefill_s, decode_s = list(local[:, 0]), list(local[:, 1])
    cell = CellId(args.parallel_strategy, args.attention_algo, comm.size, args.prompt_len,
                  MANIFEST_DTYPES[export.dtype_name])
    last = runs[-1]
    return {
        "schema_version": SCHEMA_VERSION,
        "cell": {**cell.cell_block(), "gen_len": args.gen_len, "iters": args.iters, "warmup": args.warmup,
                 "threads_per_rank": threads, "block": args.block, "seed": args.seed,
                 "sequence_layout": args.sequence_layout, "micro_batch": args.micro_batch,
                 "weights": args.weights},
        "environment": {**environment(comm, threads), "hosts": [r["host"] for r in ranks]},
        "placement": {"topology": topology(), "ranks": ranks, "sharing_cpus": shared_cpus(ranks)},
        "model": model_record(args.export, export),
        **timings(prefill_s, decode_s, steps, args.prompt_len, args.gen_len,
                  prefill_extra={**comm_books(prefill_s, args.prompt_len, list(local[:, 2]), bytes_sent[0]),
                                 **split_books(split["prefill"])},
                  decode_extra={**comm_books(decode_s, args.gen_len, list(local[:, 3]), bytes_sent[1]),
                                **split_books(split["decode"]),
                                "weights_stream_s": list(local[:, 4]), "weights_stream_bytes": stream_bytes,
                                "weights_in_order_s": list(local[:, 5])}),
        "memory": {key: [m[key] for m in mem]
                   for key in ("peak_rss_mb", "anon_mb", "anon_huge_mb", "attention_scratch_mb", "weights_mb",
                               "weights_in_2mib_pages")},
        "output": {"prompt_ids": [int(t) for t in prompt], "greedy_tokens": last["tokens"],
                   "top1_margins": last["margins"],
                   "prefill_logits": last["prefill_digest"], "final_logits": last["final_digest"]},
    }


def model_record(path: str, export: Export) -> dict:
    """The bench JSON's `model` block: where the export is, what it holds, of which checkpoint."""
    source = export.manifest["source"]
    return {"export": os.path.abspath(path), "config": export.cfg.to_dict(),
            "num_parameters": num_parameters(export.manifest),
            "dtype": export.manifest.get("dtype", "float32"),
            "synthetic": bool(source.get("synthetic")), "checkpoint_digest": source.get("digest", "")}


def num_parameters(manifest: dict) -> int:
    return int(sum(np.prod(t["shape"]) for t in manifest["tensors"].values()))


def print_summary(result: dict) -> None:
    c, p, d = result["cell"], result["prefill"], result["decode"]
    print(f"{CellId.of_run(result).name} x {c['threads_per_rank']} threads, gen {c['gen_len']}: "
          f"prefill {p['tokens_per_s']:.1f} tok/s ({1e3 * p['median_s']:.1f} ms), "
          f"decode {d['tokens_per_s']:.2f} tok/s ({d['ms_per_token']:.1f} ms/token), "
          f"peak RSS/rank {max(result['memory']['peak_rss_mb']):.0f} MB")
    if "roofline" in result:
        r = result["roofline"]
        print(f"roofline: prefill {r['prefill_gflops']:.0f} GFLOP/s = {100 * r['prefill_fraction']:.0f}% "
              f"of GEMM {r['gemm_gflops']:.0f}; decode {r['decode_gb_s']:.1f} GB/s = "
              f"{100 * r['decode_fraction']:.0f}% of reading the weights at {r['stream_gb_s']:.1f} GB/s "
              f"(NumPy's GEMV streams {r['gemv_gb_s']:.1f}); "
              f"{100 * r['decode_fraction_in_order']:.0f}% of reading them in a step's order")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    if result is not None:
        write_json_atomic(args.out, result)
        print_summary(result)


if __name__ == "__main__":
    main()
