"""Fabricated bench JSONs for the verify, report and comparison tests: TEST DATA.

`fake_run` makes a result shaped like pipeline/study/bench.py's output, with invented numbers,
never measurements.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from pipeline.cells import CellId


def phase(tokens: int, tps: float, spread: float = 0.02) -> dict:
    med = tokens / tps
    seconds = [med * (1 - spread), med, med * (1 + spread)]
    return {
        "seconds": seconds,
        "median_s": med,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "std_s": med * spread,
        "tokens": tokens,
        "tokens_per_s": tps,
        "tokens_per_s_min": tokens / max(seconds),
        "tokens_per_s_max": tokens / min(seconds),
        "ms_per_token": 1e3 * med / tokens,
        "compute_s": 0.9 * med,
        "comm_s": 0.1 * med,
        "bytes_sent_per_token": 4096.0,
    }


def environment(nranks: int, oversubscribed: bool) -> dict:
    """TEST DATA: a bench JSON's environment block."""
    return {
        "mpi_library": "MPICH Version: 4.2 (test data)",
        "mpi_version": "4.1",
        "cpu_model": "Test CPU",
        "cores": 2,
        "nranks": nranks,
        "threads_per_rank": max(1, 2 // nranks),
        "oversubscribed": oversubscribed,
        "hostname": "testhost",
        "python": "3.11",
        "numpy": "2.0",
        "simd_lanes": 8,
        "timestamp": "2026-01-01T00:00:00+00:00",
    }


def fake_run(
    strategy: str,
    algo: str,
    nranks: int,
    prompt_len: int = 16,
    *,
    prefill_tps: float = 100.0,
    decode_tps: float = 10.0,
    gen_len: int = 4,
    tokens: list[int] | None = None,
    shift: float = 0.0,
    oversubscribed: bool = False,
    dtype: str = "float32",
    low_precision: dict | None = None,
) -> dict:
    """A made-up bench result (test data) in the shape of the spec's bench JSON; `dtype` one of
    pipeline.cells.DTYPES (its export's manifest name in model.dtype), `low_precision` the block a
    bf16/int8 bench writes (left out when None)."""
    iters = 3
    prefill = phase(prompt_len, prefill_tps)
    decode = phase(gen_len, decode_tps)
    decode["step_ms"] = {"p50": 1e3 / decode_tps, "p90": 1.1e3 / decode_tps, "max": 1.2e3 / decode_tps}
    total_ms = 1e3 * sum(prefill["seconds"])
    logits = {"first8": [0.5 + shift + i / 10 for i in range(8)], "l2": 123.0 * (1 + shift), "argmax": 7}
    run = {
        "schema_version": 1,
        "cell": {
            "parallel_strategy": strategy,
            "attention_algo": algo,
            "nranks": nranks,
            "prompt_len": prompt_len,
            "gen_len": gen_len,
            "iters": iters,
            "warmup": 1,
            "threads_per_rank": max(1, 2 // nranks),
            "dtype": dtype,
        },
        "environment": environment(nranks, oversubscribed),
        "model": {
            "export": "/tmp/export",
            "config": {
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 32,
                "intermediate_size": 128,
                "vocab_size": 512,
            },
            "num_parameters": 123456,
            "dtype": {"float32": "float32", "bf16": "bfloat16", "int8": "int8"}[dtype],
            "synthetic": True,
            "checkpoint_digest": "abc123",
        },
        "prefill": prefill,
        "decode": decode,
        "ttft_ms": 1e3 * prefill["median_s"],
        "seed_metric": {
            "tokens": prompt_len * iters,
            "total_ms": total_ms,
            "ms_per_token": total_ms / (prompt_len * iters),
            "tokens_per_s": prompt_len * iters / (total_ms / 1e3),
        },
        "memory": {"peak_rss_mb": [100.0 + nranks] * nranks},
        "output": {
            "prompt_ids": list(range(prompt_len)),
            "greedy_tokens": tokens or [7, 3, 9, 1][:gen_len],
            "prefill_logits": logits,
            "final_logits": copy.deepcopy(logits),
        },
    }
    if low_precision is not None:
        run["low_precision"] = {"reference_export": "/tmp/export-float32", **low_precision}
    return run


def low_block(nmse: float = 2e-5, kl_mean: float = 1e-4, kl_max: float = 3e-3, top1: float = 0.96875,
              steps: int = 32) -> dict:
    """TEST DATA: a made-up low_precision block (measures of a bf16/int8 cell against float32)."""
    return {"steps": steps, "nmse": nmse, "kl_mean": kl_mean, "kl_max": kl_max, "top1_agreement": top1}


MATRIX = [(s, a, p) for s in ("headwise", "sequence") for a in ("standard", "online_softmax") for p in (1, 2)]


def write_runs(directory: Path, runs: list[dict]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in runs:
        path = directory / f"{CellId.of_run(run).name}.json"
        path.write_text(json.dumps(run))
        paths.append(str(path))
    return paths


def matrix_runs(dtype: str = "float32", default: float = 100.0, **speeds) -> list[dict]:
    """The 2 x 2 x {1,2} matrix of one dtype; speeds maps a cell name to its prefill tokens/s
    (`default` otherwise), decode a tenth of it; a low-precision cell carries low_block()."""
    runs = []
    for s, a, p in MATRIX:
        name = CellId(s, a, p, 16, dtype).name
        tps = speeds.get(name, default)
        runs.append(fake_run(s, a, p, prefill_tps=tps, decode_tps=tps / 10, dtype=dtype,
                             low_precision=low_block() if dtype != "float32" else None))
    return runs

