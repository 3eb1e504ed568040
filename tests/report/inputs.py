"""The report's other inputs as TEST DATA (cost model, HF baseline, a comparison), and a runner of
`python -m pipeline report` that returns what it wrote: summary.json, report.md, summary.csv rows."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from pipeline.report import cli
from tests.report.fakes import MATRIX, fake_run, write_runs


def run_report(tmp_path: Path, runs: list[dict], *extra: str, cells: list[str] | None = None):
    """(summary.json, report.md text, summary.csv rows) of the report over `runs`."""
    paths = write_runs(tmp_path / "runs", runs)
    out = tmp_path / "out"
    args = [
        "--runs",
        *paths,
        "--out-md",
        str(out / "report.md"),
        "--out-csv",
        str(out / "summary.csv"),
        *extra,
    ]
    if cells is not None:
        args += ["--cells", *cells]
    assert cli.main(args) == 0
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    return json.loads((out / "summary.json").read_text()), (out / "report.md").read_text(), rows


def write_json(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def fake_curves() -> list[dict]:
    """TEST DATA: sequence_zigzag predicted 1.2x head-wise everywhere, head-wise cannot run beyond 8 ranks."""
    return [
        {
            "strategy": strategy,
            "attention_algo": algo,
            "nranks": p,
            "prompt_len": n,
            "feasible": strategy != "headwise" or p <= 8,
            "prefill_tok_s": (100.0 if strategy == "headwise" else 120.0) * p**0.5,
            "decode_tok_s": 10.0 * p**0.5,
        }
        for strategy in ("headwise", "sequence_zigzag")
        for algo in ("standard", "online_softmax")
        for p in (1, 2, 64)
        for n in (16, 32768)
    ]


def fake_costmodel() -> dict:
    """TEST DATA shaped like pipeline.study.costmodel's output (numbers invented)."""
    cells = [
        {
            "cell": "headwise_standard_np2_p16",
            "calibration_cell": False,
            "measured_prefill_tok_s": 100.0,
            "predicted_prefill_tok_s": 141.4,
            "prefill_error_pct": 41.4,
            "measured_decode_tok_s": 10.0,
            "predicted_decode_tok_s": 9.0,
            "decode_error_pct": -10.0,
            "measured_prefill_comm_s": 0.002,
            "predicted_prefill_comm_s": 0.001,
            "predicted_prefill_bound": "compute",
        }
    ]
    calibration = {
        "gflops_per_core": 120.0,
        "attn_gflops_per_core": 60.0,
        "decode_gflops_per_core": 130.0,
        "mem_gb_s_per_node": 25.0,
        "cores_per_node": 2,
        "cells": ["headwise_standard_np1_p16"],
        "checks": [],
    }
    error = {
        "cells": 8,
        "held_out_cells": 4,
        "prefill_mean_abs_error_pct": 12.0,
        "prefill_max_abs_error_pct": 41.4,
        "decode_mean_abs_error_pct": 5.0,
        "decode_max_abs_error_pct": 10.0,
    }
    cluster = {
        "name": "test cluster",
        "cores_per_node": 64,
        "ranks_per_node": 1,
        "gflops_per_core": 50.0,
        "mem_gb_s_per_node": 200.0,
        "net_alpha_s": 2e-6,
        "net_bandwidth_gb_s": 12.5,
        "from_config": ["cores_per_node"],
    }
    group = {
        "model": {"config": {"num_hidden_layers": 2}, "dtype": "float32"},
        "calibration": {
            "standard": calibration,
            "online_softmax": {**calibration, "borrowed_from": "standard"},
        },
        "intra_node": {"source": "allreduce sweep at P=2", "alpha_s": 4e-6, "beta_s_per_byte": 2e-10},
        "error": error,
        "cluster": cluster,
        "cells": cells,
        "curves": fake_curves(),
    }
    return {
        "equations_md": "t_prefill = flops / rate + layers * 2 * (alpha + bytes / beta)",
        "groups": [group],
    }


def fake_baseline(prompt_len: int = 16, available: bool = True) -> dict:
    """TEST DATA shaped like pipeline.study.baseline's output: 50 tokens/s prefill, 5 decode."""
    if not available:
        return {
            "schema_version": 1,
            "name": "HF transformers (torch)",
            "available": False,
            "reason": "torch/transformers not importable: No module named 'torch'",
        }
    run = fake_run("headwise", "standard", 1, prompt_len, prefill_tps=50.0, decode_tps=5.0)
    return {
        "schema_version": 1,
        "name": "HF transformers (torch)",
        "available": True,
        "cell": {"prompt_len": prompt_len, "gen_len": 4, "iters": 3, "warmup": 1, "threads": 2, "seed": 0},
        "environment": {"torch": "2.x", "transformers": "5.x", "attn_implementation": "sdpa"},
        **{k: run[k] for k in ("prefill", "decode", "ttft_ms", "seed_metric", "output")},
    }


def fake_comparison() -> dict:
    """TEST DATA: the smallest `pipeline compare` result, a reference and one variant at half its rate."""

    def variant(name: str, rate: float, reference: str | None) -> dict:
        v = {
            "name": name,
            "label": name,
            "kind": "bench",
            "settings": {},
            "reference": reference,
            "rounds": {"prefill": [rate], "decode": [rate / 10]},
            "median": {"prefill": rate, "decode": rate / 10},
        }
        if reference:
            v.update(
                ratio={"prefill": 0.5, "decode": 0.5},
                ratio_rounds={"prefill": [0.5], "decode": [0.5]},
                tokens_agree=True,
            )
        return v

    return {
        "schema_version": 1,
        "name": "dtype",
        "question": "Is bf16 faster?",
        "rounds": 1,
        "units": {"prefill": "tok/s", "decode": "tok/s"},
        "variants": [variant("float32", 100.0, None), variant("bfloat16", 50.0, "float32")],
    }


def long_runs(seq_speed_4096: float) -> list[dict]:
    """Head-wise and sequence at prompts 128 and 4096 on 1 and 2 ranks: all at 100 prefill tokens/s but
    sequence on 2 ranks at 4096; standard attention's peak RSS 300 MB at 4096 (else 100)."""
    runs = []
    for n in (128, 4096):
        for s, a, p in MATRIX:
            tps = 100.0 if n == 128 or s == "headwise" or p == 1 else seq_speed_4096
            run = fake_run(s, a, p, prompt_len=n, prefill_tps=tps)
            run["cell"]["sequence_layout"] = "zigzag"
            run["memory"]["peak_rss_mb"] = [(300.0 if a == "standard" and n == 4096 else 100.0)] * p
            runs.append(run)
    return runs


def compare_doc(name: str, variants: dict[str, tuple], skipped: list[str] | None = None) -> dict:
    """TEST DATA: a `pipeline compare` result from made-up per-round rates. `variants` maps a name to
    (kind, label, reference or None, prefill rounds, decode rounds); a variant's ratio per round is
    its rate over its reference's in that round, the median over the rounds, as compare.py defines."""
    out = []
    for vname, (kind, label, ref, prefill, decode) in variants.items():
        v = {"name": vname, "label": label, "kind": kind, "settings": {}, "reference": ref,
             "rounds": {"prefill": prefill, "decode": decode},
             "median": {"prefill": statistics.median(prefill), "decode": statistics.median(decode)}}
        if ref:
            base = variants[ref]
            rr = {ph: [a / b for a, b in zip(v["rounds"][ph], base[3 + i], strict=True)]
                  for i, ph in enumerate(("prefill", "decode"))}
            v.update(ratio_rounds=rr, ratio={ph: statistics.median(x) for ph, x in rr.items()},
                     tokens_agree=None if kind == "ceilings" else True)
        out.append(v)
    return {"schema_version": 1, "name": name, "question": f"{name}?", "rounds": 3, "metric": "tokens_per_s",
            "units": {"prefill": "tok/s", "decode": "tok/s"},
            "run": {"prompt_len": 16, "gen_len": 4, "iters": 3, "warmup": 1},
            "variants": out, "skipped": skipped or [], "machine": {"cpu_model": "Test CPU", "cores": 2}}
