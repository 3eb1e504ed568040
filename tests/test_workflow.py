"""The workflow: verify and report on fabricated bench JSONs, and Snakemake's own checks.

The bench JSONs here are TEST DATA made up by `fake_run` (shaped like pipeline/study/bench.py's output,
numbers invented), never measurements. The Snakemake tests only parse and dry-run the workflow.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_export.config import PRESETS
from pipeline.report import render as report
from pipeline.report import verify

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))


# ----------------------------------------------------------------------------- fake data


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
) -> dict:
    """A made-up bench result (test data) in the shape of the spec's bench JSON."""
    iters = 3
    prefill = phase(prompt_len, prefill_tps)
    decode = phase(gen_len, decode_tps)
    decode["step_ms"] = {"p50": 1e3 / decode_tps, "p90": 1.1e3 / decode_tps, "max": 1.2e3 / decode_tps}
    total_ms = 1e3 * sum(prefill["seconds"])
    logits = {"first8": [0.5 + shift + i / 10 for i in range(8)], "l2": 123.0 * (1 + shift), "argmax": 7}
    return {
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
        },
        "environment": {
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
        },
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
            "dtype": "float32",
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


MATRIX = [(s, a, p) for s in ("headwise", "sequence") for a in ("standard", "online_softmax") for p in (1, 2)]


def write_runs(directory: Path, runs: list[dict]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in runs:
        path = directory / f"{verify.cell_name(run)}.json"
        path.write_text(json.dumps(run))
        paths.append(str(path))
    return paths


def matrix_runs(**speeds) -> list[dict]:
    """The 2 x 2 x {1,2} matrix; speeds maps a cell name to its prefill tokens/s (default 100)."""
    runs = []
    for s, a, p in MATRIX:
        name = f"{s}_{a}_np{p}_p16"
        runs.append(
            fake_run(s, a, p, prefill_tps=speeds.get(name, 100.0), decode_tps=speeds.get(name, 100.0) / 10)
        )
    return runs


# ----------------------------------------------------------------------------- verify


def test_verify_all_match(tmp_path):
    paths = write_runs(tmp_path / "runs", matrix_runs())
    rc = verify.main(
        [
            "--runs",
            *paths,
            "--atol",
            "1e-3",
            "--rtol",
            "1e-4",
            "--out-md",
            str(tmp_path / "v.md"),
            "--out-json",
            str(tmp_path / "v.json"),
        ]
    )
    assert rc == 0
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["ok"] and len(result["cells"]) == len(MATRIX)
    assert result["references"] == ["headwise_standard_np1_p16"]
    assert {c["reference"] for c in result["cells"]} == {"headwise_standard_np1_p16"}
    assert "All 8 cells match" in (tmp_path / "v.md").read_text()


def test_verify_tolerance_is_applied():
    ref = fake_run("headwise", "standard", 1)
    within = fake_run("sequence", "online_softmax", 2, shift=5e-4)
    beyond = fake_run("sequence", "online_softmax", 2, shift=5e-3)
    assert verify.compare(within, ref, atol=1e-3, rtol=1e-2)["ok"]
    bad = verify.compare(beyond, ref, atol=1e-3, rtol=1e-2)
    assert not bad["ok"] and "prefill logits differ" in bad["problems"][0]
    assert verify.compare(within, ref, atol=1e-3, rtol=1e-6)["problems"] == [
        f"logits L2 norm differs by {5e-4:.3g} (relative) > rtol 1e-06"
    ]


def test_verify_mismatch_fails_naming_cells(tmp_path, capsys):
    runs = matrix_runs()
    runs[5]["output"]["greedy_tokens"] = [7, 3, 8, 1]
    runs[6]["output"]["final_logits"]["first8"][0] = float("nan")
    paths = write_runs(tmp_path / "runs", runs)
    rc = verify.main(
        [
            "--runs",
            *paths,
            "--atol",
            "1e-3",
            "--rtol",
            "1e-4",
            "--out-md",
            str(tmp_path / "v.md"),
            "--out-json",
            str(tmp_path / "v.json"),
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{verify.cell_name(runs[5])} does not match headwise_standard_np1_p16" in err
    assert "greedy tokens differ from step 2" in err
    assert verify.cell_name(runs[6]) in err
    assert "MISMATCH" in (tmp_path / "v.md").read_text()


def test_verify_needs_single_rank_reference(tmp_path, capsys):
    paths = write_runs(tmp_path / "runs", [fake_run("headwise", "standard", 2)])
    rc = verify.main(
        [
            "--runs",
            *paths,
            "--atol",
            "1e-3",
            "--rtol",
            "1e-4",
            "--out-md",
            str(tmp_path / "v.md"),
            "--out-json",
            str(tmp_path / "v.json"),
        ]
    )
    assert rc == 2
    assert "no 1-rank cell with prompt_len=16" in capsys.readouterr().err


def test_verify_rejects_duplicate_and_broken_files(tmp_path):
    run = fake_run("headwise", "standard", 1)
    (tmp_path / "a.json").write_text(json.dumps(run))
    (tmp_path / "b.json").write_text(json.dumps(run))
    with pytest.raises(verify.RunError, match="also in"):
        verify.load_runs([tmp_path / "a.json", tmp_path / "b.json"])
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(verify.RunError, match="c.json"):
        verify.load_run(tmp_path / "c.json")


# ----------------------------------------------------------------------------- report


def run_report(
    tmp_path: Path, runs: list[dict], *extra: str, cells: list[str] | None = None
) -> tuple[str, list]:
    paths = write_runs(tmp_path / "runs", runs)
    args = [
        "--runs",
        *paths,
        "--out-md",
        str(tmp_path / "out" / "report.md"),
        "--out-csv",
        str(tmp_path / "out" / "summary.csv"),
        *extra,
    ]
    if cells is not None:
        args += ["--cells", *cells]
    assert report.main(args) == 0
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    return (tmp_path / "out" / "report.md").read_text(), rows


def test_report_full_matrix(tmp_path):
    text, rows = run_report(
        tmp_path, matrix_runs(headwise_standard_np2_p16=180.0), "--workflow-config", json.dumps({"iters": 3})
    )
    for heading in (
        "## Prompt length 16",
        "### Prefill",
        "### Decode",
        "### Scaling with ranks",
        "## Verification",
        "## Findings",
        "## Compute and communication",
        "## Memory",
    ):
        assert heading in text
    assert "Test CPU, 2 cores" in text and "MPICH Version: 4.2" in text and "`abc123`" in text
    assert '"iters": 3' in text
    # the fastest row of the 2-rank prefill table is bold, with its measured numbers
    assert "| **headwise** | **standard** |" in text
    assert "180 (×1.80, 90%)" in text  # tokens/s, speed-up and efficiency vs 1 rank
    assert "All 8 measured cells match" in text
    assert (tmp_path / "out" / "figures" / "throughput_p16.png").stat().st_size > 1000
    assert (tmp_path / "out" / "figures" / "cells_p16.png").stat().st_size > 1000
    assert "](figures/throughput_p16.png)" in text
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    row = next(r for r in rows if r["cell"] == "headwise_standard_np2_p16")
    assert float(row["prefill_tokens_per_s"]) == 180.0 and float(row["prefill_speedup"]) == pytest.approx(1.8)
    assert row["verify_ok"] == "True" and row["verify_reference"] == "headwise_standard_np1_p16"


def test_report_findings_are_computed_against_the_seed(tmp_path):
    # head-wise + standard on 2 ranks fastest: the seed's pick (sequence + online_softmax, 2 ranks) loses
    text, _ = run_report(
        tmp_path, matrix_runs(headwise_standard_np2_p16=180.0, sequence_online_softmax_np2_p16=120.0)
    )
    assert (
        "prompt 16, prefill, 2 ranks: fastest is **headwise + standard** at 180 tokens/s, "
        "50.0% ahead of sequence + online_softmax" in text
    )
    assert (
        'best configuration"* (prompt 16, prefill): **contradicted**: the fastest is headwise + standard '
        "on 2 ranks (180 tokens/s); the seed's pick gives 120 tokens/s (33.3% slower)" in text
    )
    assert (
        'scales better than head-wise"* (prefill): **partly**: sequence scales better in 1 of 2 cases' in text
    )
    assert "give different output ranges" in text and "**contradicted**: every cell" in text
    # and the other way round
    text, _ = run_report(
        tmp_path / "b", matrix_runs(sequence_online_softmax_np2_p16=300.0, sequence_standard_np2_p16=250.0)
    )
    assert 'best configuration"* (prompt 16, prefill): **agrees**' in text
    assert 'scales better than head-wise"* (prefill): **agrees**' in text


def test_report_marks_missing_and_not_applicable(tmp_path):
    runs = [r for r in matrix_runs() if verify.cell_name(r) != "sequence_standard_np2_p16"]
    cells = [f"{s}_{a}_np{p}_p16" for s, a, p in MATRIX] + ["headwise_standard_np4_p16"]
    text, rows = run_report(
        tmp_path,
        runs,
        "--not-applicable",
        "headwise_standard_np4_p16=P=4 does not divide num_key_value_heads=2",
        "--logs-dir",
        "results/logs/bench",
        cells=cells,
    )
    assert "7 of 9 cells measured." in text
    assert (
        "| sequence_standard_np2_p16 | missing | no result: the bench failed or was not run "
        "(see results/logs/bench/sequence_standard_np2_p16.log) |"
    ) in text
    assert "| headwise_standard_np4_p16 | n/a | P=4 does not divide num_key_value_heads=2 |" in text
    assert "| sequence | standard | missing |" in text
    status = {r["cell"]: r["status"] for r in rows}
    assert status["sequence_standard_np2_p16"] == "missing" and status["headwise_standard_np4_p16"] == "n/a"
    assert len(rows) == 9


def test_report_ignores_runs_outside_the_matrix_and_survives_no_reference(tmp_path):
    runs = [fake_run("sequence", "standard", 2), fake_run("headwise", "standard", 2, prompt_len=32)]
    text, rows = run_report(tmp_path, runs, cells=["sequence_standard_np2_p16", "sequence_standard_np1_p16"])
    assert [r["cell"] for r in rows] == ["sequence_standard_np1_p16", "sequence_standard_np2_p16"]
    assert "no 1-rank cell with prompt_len=16" in text


def fake_costmodel() -> dict:
    """Test data shaped like pipeline.study.costmodel's output (numbers invented)."""
    curves = [
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
    return {
        "equations_md": "t_prefill = flops / rate + layers * 2 * (alpha + bytes / beta)",
        "groups": [
            {
                "model": {"config": {"num_hidden_layers": 2}, "dtype": "float32"},
                "calibration": {
                    "standard": calibration,
                    "online_softmax": {**calibration, "borrowed_from": "standard"},
                },
                "intra_node": {"source": "allreduce sweep at P=2", "alpha_s": 4e-6, "beta_s_per_byte": 2e-10},
                "error": {
                    "cells": 8,
                    "held_out_cells": 4,
                    "prefill_mean_abs_error_pct": 12.0,
                    "prefill_max_abs_error_pct": 41.4,
                    "decode_mean_abs_error_pct": 5.0,
                    "decode_max_abs_error_pct": 10.0,
                },
                "cluster": {
                    "name": "test cluster",
                    "cores_per_node": 64,
                    "ranks_per_node": 1,
                    "gflops_per_core": 50.0,
                    "mem_gb_s_per_node": 200.0,
                    "net_alpha_s": 2e-6,
                    "net_bandwidth_gb_s": 12.5,
                    "from_config": ["cores_per_node"],
                },
                "cells": cells,
                "curves": curves,
            }
        ],
    }


def test_report_optional_sections(tmp_path):
    runs = matrix_runs()
    for r in runs:
        r["roofline"] = {
            "gemm_gflops": 250.0,
            "gemv_gb_s": 25.0,
            "prefill_gflops": 200.0,
            "prefill_fraction": 0.8,
            "decode_gb_s": 22.5,
            "decode_fraction": 0.9,
            "ceilings": {"gemm_gflops_best": 270.0, "gemv_gb_s_best": 26.0},
        }
        r["prefill"]["roofline_fraction"] = 0.8
        r["decode"]["roofline_fraction"] = 0.9
        r["memory"]["anon_mb"] = [12.5] * r["cell"]["nranks"]
        r["cell"]["sequence_layout"] = "zigzag"
        r["environment"]["oversubscribed"] = r["cell"]["nranks"] > 1
    runs[-1]["roofline"]["gemm_gflops"] = 10.0  # measured while the machine was busy
    (tmp_path / "cm.json").write_text(json.dumps(fake_costmodel()))
    text, rows = run_report(tmp_path, runs, "--costmodel", str(tmp_path / "cm.json"))
    assert "fractions are not trustworthy): sequence_online_softmax_np2_p16." in text
    # roofline: columns in the per-length tables and a section with the ceilings
    assert "% of GEMM ceiling |" in text and "% of streaming bandwidth |" in text
    assert (
        "| headwise_standard_np1_p16 | 200 | 250 (best 270) | 80% | 22.5 | 25.0 (best 26.0) | 90% |" in text
    )
    assert "| sequence layout | zigzag |" in text
    assert "| headwise_standard_np1_p16 | 101 | 101 | 12.5 |" in text  # peak RSS max, per rank, anon per rank
    # cost model: calibration, predicted beside measured with the error stated, the cluster, curves, appendix
    assert "## Cost model" in text and "## Appendix: the cost model's equations" in text
    assert "| standard | 120 | 60.0 | 130 | 25.0 | 2 | headwise_standard_np1_p16 |" in text
    assert "| online_softmax | 120 | 60.0 | 130 | 25.0 | 2 | borrowed from standard |" in text
    assert "Intra-node MPI (allreduce sweep at P=2): alpha 4.00 µs, beta 0.2 ns/byte (5.0 GB/s)." in text
    assert (
        "| headwise_standard_np2_p16 | prefill | 100 | 141 | +41% | 2.00 / 1.00 | compute | held out |"
        in text
    )
    assert "| headwise_standard_np2_p16 | decode | 10.0 | 9.0 | -10% | — | — | held out |" in text
    assert (
        "Prediction error over the 4 held-out cells (of 8; the others calibrated the model): prefill mean "
        "|error| 12% (max 41%), decode mean |error| 5% (max 10%)." in text
    )
    assert "Predicted cluster — test cluster: 64 cores and 200 GB/s per node" in text
    assert "Predicted prefill tokens/s, online_softmax" in text
    assert "| headwise | 32768 | 100 | 141 | — |" in text  # beyond the measured lengths; P=64 infeasible
    assert "| sequence_zigzag | 32768 | 120 | 170 | 960 |" in text
    assert "fastest predicted prefill: **sequence_zigzag** in 6 of 6 (prompt, P) points" in text
    assert "The other algorithms' predictions (standard) are in results/costmodel.json." in text
    assert (tmp_path / "out" / "figures" / "costmodel.png").stat().st_size > 1000
    assert "![predicted curves](figures/costmodel.png)" in text
    assert "† marks oversubscribed cells" in text and "online_softmax †" in text
    assert rows[0]["roofline.prefill_fraction"] == "0.8" and rows[0]["anon_mb_per_rank"] == "12.5"
    assert {r["sequence_layout"] for r in rows if r["strategy"] == "sequence"} == {"zigzag"}


def test_report_names_the_vector_width_and_flags_a_mix(tmp_path):
    """Cells from CPUs of different SIMD width (an AVX-512 and an AVX2 VM) must not pass as one machine."""
    runs = matrix_runs()
    text, _ = run_report(tmp_path / "same", runs)
    assert "Test CPU, 2 cores, 8-lane float vectors (host testhost)" in text
    runs[0]["environment"]["simd_lanes"] = 16
    text, _ = run_report(tmp_path / "mixed", runs)
    assert "16 / 8 (differs between cells!)-lane float vectors" in text


def test_report_without_costmodel_file_leaves_the_section_out(tmp_path):
    text, _ = run_report(tmp_path, matrix_runs(), "--costmodel", str(tmp_path / "no-such.json"))
    assert "## Cost model" not in text and not (tmp_path / "out" / "figures" / "costmodel.png").exists()


def test_report_performance_targets(tmp_path):
    runs = matrix_runs(headwise_standard_np2_p16=95.0, headwise_online_softmax_np2_p16=89.96)
    for r in runs:
        r["cell"]["prompt_len"] = 128  # (the name follows the cell)
        r["prefill"]["roofline_fraction"] = 0.8 if r["cell"]["attention_algo"] == "standard" else 0.5
        r["decode"]["roofline_fraction"] = 0.9
    text, _ = run_report(tmp_path, runs)
    assert "### Performance targets" in text
    assert (
        "- 1 rank x 2 threads, prompt 128, headwise + standard: prefill at 80.0% (target 75%: **met**) of "
        "the GEMM ceiling, decode at 90.0% (target 85%: **met**) of the streaming bandwidth." in text
    )
    assert "headwise + online_softmax: prefill at 50.0% (target 75%: **not met**)" in text
    assert (
        "- head-wise + standard, prompt 128: 2 ranks x 1 thread reach 95.0% (target 90%: **met**) of 1 "
        "rank x 2 threads in prefill and 95.0% (target 90%: **met**) in decode." in text
    )
    # 89.96% is short of 90%: shown truncated, never rounded up to the target
    assert (
        "head-wise + online_softmax, prompt 128: 2 ranks x 1 thread reach 89.9% (target 90%: **not met**)"
        in text
    )


def long_runs(seq_speed_4096: float) -> list[dict]:
    """Head-wise and sequence at prompts 128 and 4096 on 1 and 2 ranks (test data)."""
    runs = []
    for n in (128, 4096):
        for s, a, p in MATRIX:
            tps = 100.0 if n == 128 or s == "headwise" or p == 1 else seq_speed_4096
            run = fake_run(s, a, p, prompt_len=n, prefill_tps=tps)
            run["cell"]["sequence_layout"] = "zigzag"
            run["memory"]["peak_rss_mb"] = [(300.0 if a == "standard" and n == 4096 else 100.0)] * p
            runs.append(run)
    return runs


def test_report_long_context(tmp_path):
    text, _ = run_report(tmp_path, long_runs(seq_speed_4096=125.0))
    assert "## Long context" in text and "(sequence layout: zigzag)" in text
    assert (
        "| strategy + algorithm | P | p128 prefill tok/s | p128 peak RSS MB | p4096 prefill tok/s "
        "| p4096 peak RSS MB |" in text
    )
    assert "| sequence + online_softmax | 2 | 100 | 100 | 125 | 100 |" in text
    assert (
        "- prefill: sequence parallelism beats head-wise in 2 of 4 matched cells: prompt 4096, P=2, standard "
        "(×1.25); prompt 4096, P=2, online_softmax (×1.25)." in text
    )
    assert (
        "- peak RSS, prompt 4096, headwise, P=1: standard 300 MB, online_softmax 100 MB "
        "(standard uses ×3.00)." in text
    )
    text, _ = run_report(tmp_path / "never", long_runs(seq_speed_4096=80.0))
    assert (
        "- prefill: sequence parallelism never beats head-wise here (4 matched cells); closest at "
        "prompt 128, P=2, standard: ×1.00 head-wise's tokens/s." in text
    )
    text, _ = run_report(tmp_path / "short", matrix_runs())
    assert "## Long context" not in text


def fake_baseline(prompt_len: int = 16, available: bool = True) -> dict:
    """Test data shaped like pipeline.study.baseline's output."""
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


def test_report_baseline_row(tmp_path):
    (tmp_path / "hf_p16.json").write_text(json.dumps(fake_baseline()))
    text, rows = run_report(tmp_path, matrix_runs(), "--baseline", str(tmp_path / "hf_p16.json"))
    assert "| *HF transformers (torch)* | sdpa, 2 threads | 320 | 20.00 | 50.0 (49.0–51.0) |" in text
    assert text.count("| *HF transformers (torch)* |") == 2  # the 1-rank prefill and decode tables
    assert "Against headwise_standard_np1_p16: greedy tokens identical" in text
    assert "- prompt 16, prefill: HF transformers (2 threads) 50.0 tokens/s; our fastest cell" in text
    assert len(rows) == 8  # the CSV stays one row per cell
    (tmp_path / "hf_none.json").write_text(json.dumps(fake_baseline(available=False)))
    text, _ = run_report(tmp_path / "b", matrix_runs(), "--baseline", str(tmp_path / "hf_none.json"))
    assert "The HF transformers baseline did not run: torch/transformers not importable" in text
    assert "| *HF transformers (torch)* |" not in text


def fake_dtype_compare(speedup_p1, same_tokens=True):
    """TEST DATA shaped like pipeline.study.dtype_compare's output: float32 at 10 tok/s decode."""

    def dtype(name, decode, tokens):
        return {"dtype": name, "export": f"/x/{name}", "threads_per_rank": 2, "decode_tokens_per_s": decode,
                "prefill_tokens_per_s": 200.0, "decode_rounds": [decode], "prefill_rounds": [200.0],
                "decode_gb_s": 30.0, "peak_rss_mb": 1000.0, "greedy_tokens": tokens}

    groups = []
    for p, speedup in ((1, speedup_p1), (2, 2.0)):
        f32 = dtype("float32", 10.0, [1, 2])
        bf = dtype("bfloat16", 10.0 * speedup, [1, 2] if same_tokens else [1, 3])
        groups.append({"nranks": p, "threads": 2, "dtypes": {"float32": f32, "bfloat16": bf},
                       "decode_speedup": speedup, "prefill_ratio": 1.0,
                       "decode_speedup_rounds": [speedup - 0.1, speedup, speedup + 0.2],
                       "prefill_ratio_rounds": [1.0, 1.0, 1.0], "same_greedy_tokens": same_tokens})
    return {"schema_version": 1, "strategy": "headwise", "algo": "online_softmax", "prompt_len": 128,
            "gen_len": 32, "iters": 3, "rounds": 3, "groups": groups}


@pytest.mark.parametrize("speedup, same, verdict", [(1.75, True, "**met**"), (1.2, False, "**not met**")])
def test_report_bf16_section(tmp_path, speedup, same, verdict):
    (tmp_path / "dtype.json").write_text(json.dumps(fake_dtype_compare(speedup, same)))
    text, _ = run_report(tmp_path, matrix_runs(), "--dtype-compare", str(tmp_path / "dtype.json"))
    assert "## bf16 weights" in text
    assert f"| 1 x 2 | 10.00 | {10 * speedup:.2f} | ×{speedup:.2f} |" in text
    assert (
        f"- 1 rank x 2 threads: bf16 decode ×{speedup:.2f} float32's (target ×1.6: {verdict}); per round: "
        f"×{speedup - 0.1:.2f} / ×{speedup:.2f} / ×{speedup + 0.2:.2f}." in text
    )
    assert ("| 1,000 | 1,000 | yes |" in text) == same
    assert ("| 1,000 | 1,000 | **no** |" in text) == (not same)
    text, _ = run_report(tmp_path / "none", matrix_runs())
    assert "## bf16 weights" not in text


def fake_rank_compare(prefill_ratios, decode_ratios, same_tokens=True):
    """TEST DATA shaped like pipeline.study.rank_compare's output: head-wise, both algorithms, prompt 128;
    the ratios are given per round (the median over them is the group's figure)."""

    def layout(nranks, tps):
        return {"dtype": "float32", "export": "/x", "nranks": nranks, "threads_per_rank": 2 // nranks,
                "decode_tokens_per_s": tps / 10, "prefill_tokens_per_s": tps, "decode_rounds": [tps / 10],
                "prefill_rounds": [tps], "decode_gb_s": 20.0, "peak_rss_mb": 100.0, "greedy_tokens": [1, 2]}

    groups = [
        {"algo": algo, "threads": layout(1, 100.0), "ranks": layout(2, 100.0 * sorted(prefill_ratios)[1]),
         "prefill_ratio_rounds": list(prefill_ratios), "prefill_ratio": sorted(prefill_ratios)[1],
         "decode_ratio_rounds": list(decode_ratios), "decode_ratio": sorted(decode_ratios)[1],
         "same_greedy_tokens": same_tokens}
        for algo in ("standard", "online_softmax")
    ]
    return {"schema_version": 1, "strategy": "headwise", "cores": 2, "prompt_len": 128, "gen_len": 32,
            "iters": 3, "warmup": 1, "rounds": 3, "groups": groups}


def test_report_judges_ranks_against_threads_back_to_back(tmp_path):
    runs = matrix_runs(headwise_online_softmax_np2_p16=89.96)
    for r in runs:
        r["cell"]["prompt_len"] = 128  # (the name follows the cell)
    path = tmp_path / "rank.json"
    path.write_text(json.dumps(fake_rank_compare((1.05, 0.97, 1.10), (0.95, 0.85, 0.80))))
    text, _ = run_report(tmp_path, runs, "--rank-compare", str(path))
    assert (
        "- head-wise + online_softmax, prompt 128, back to back: 2 ranks x 1 thread reach 105.0% (target "
        "90%: **met**) of 1 rank x 2 threads in prefill and 85.0% (target 90%: **not met**) in decode "
        "(median of 3 rounds, the two layouts adjacent in each; per round: prefill 105.0% / 97.0% / 110.0%, "
        "decode 95.0% / 85.0% / 80.0%; pipeline/study/rank_compare.py)." in text
    )
    # the matrix's cells of the same comparison are shown, but no longer judged
    assert (
        "- head-wise + online_softmax, prompt 128: 2 ranks x 1 thread reach 89.9% of 1 rank x 2 threads in "
        "prefill and 89.9% in decode in the matrix's cells, which ran minutes apart (judged back to back, "
        "above)." in text
    )
    assert "reach 89.9% (target" not in text
    # cells the comparison does not cover (another prompt length) keep their verdict
    text, _ = run_report(tmp_path / "p16", matrix_runs(headwise_online_softmax_np2_p16=89.96),
                         "--rank-compare", str(path))
    assert "prompt 16: 2 ranks x 1 thread reach 89.9% (target 90%: **not met**)" in text
    path.write_text(json.dumps(fake_rank_compare((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), same_tokens=False)))
    text, _ = run_report(tmp_path / "diff", runs, "--rank-compare", str(path))
    assert "; **the two layouts' greedy tokens differ**." in text


FAKE_MPIEXEC = """\
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_workflow import fake_run
args = sys.argv[1:]
nranks = int(args[args.index("-n") + 1])
algo = args[args.index("--attention-algo") + 1]
bf16 = "bf16" in args[args.index("--export") + 1]
out = Path(args[args.index("--out") + 1])
with open({log!r}, "a") as f:
    f.write(f"{{algo}} {{nranks}}{{' bf16' if bf16 else ''}}\\n")
rnd = int(out.stem.rsplit("_r", 1)[1])
# 2 ranks (or bf16): prefill x1.2, x0.8, x1.0 over 1 rank (float32) in rounds 0, 1, 2; decode x0.5
other = nranks == 2 or bf16
prefill = 100.0 * ([1.2, 0.8, 1.0][rnd] if other else 1.0)
run = fake_run("headwise", algo, nranks, prompt_len=128, prefill_tps=prefill, decode_tps=10.0 / (1 + other))
run["roofline"] = {{"decode_gb_s": 1.0}}
out.write_text(json.dumps(run))
"""


def test_rank_compare_alternates_the_layouts_and_takes_the_median_ratio(synthetic_tiny_export, tmp_path):
    from pipeline.study import rank_compare

    log = tmp_path / "order.log"
    fake = tmp_path / "fake_mpiexec.py"  # test double for the launcher: writes made-up bench JSONs
    fake.write_text(FAKE_MPIEXEC.format(tests=str(ROOT / "tests"), log=str(log)))
    out = tmp_path / "rank_compare.json"
    rc = rank_compare.main(["--export", str(synthetic_tiny_export), "--cores", "2", "--rounds", "3",
                            "--mpi", f"{sys.executable} {fake}", "--out", str(out)])
    assert rc == 0
    assert log.read_text().split("\n")[:-1] == [
        "standard 1", "standard 2", "online_softmax 1", "online_softmax 2",  # round 0: 1 x 2 first
        "standard 2", "standard 1", "online_softmax 2", "online_softmax 1",  # round 1: reversed
        "standard 1", "standard 2", "online_softmax 1", "online_softmax 2",
    ]
    result = json.loads(out.read_text())
    assert [g["algo"] for g in result["groups"]] == ["standard", "online_softmax"]
    for g in result["groups"]:
        assert g["prefill_ratio_rounds"] == pytest.approx([1.2, 0.8, 1.0])
        assert g["prefill_ratio"] == pytest.approx(1.0) and g["decode_ratio"] == pytest.approx(0.5)
        assert g["threads"]["nranks"] == 1 and g["ranks"]["nranks"] == 2 and g["same_greedy_tokens"]
    assert len(list((tmp_path / "rank_compare").glob("*.json"))) == 12


def test_dtype_compare_alternates_the_dtypes_and_takes_the_median_ratio(
    synthetic_tiny_export, synthetic_tiny_export_bf16, tmp_path
):
    from pipeline.study import dtype_compare

    log = tmp_path / "order.log"
    fake = tmp_path / "fake_mpiexec.py"  # test double for the launcher: writes made-up bench JSONs
    fake.write_text(FAKE_MPIEXEC.format(tests=str(ROOT / "tests"), log=str(log)))
    out = tmp_path / "dtype_compare.json"
    rc = dtype_compare.main(["--exports", str(synthetic_tiny_export), str(synthetic_tiny_export_bf16),
                             "--ranks", "1", "--threads", "2", "--rounds", "3",
                             "--mpi", f"{sys.executable} {fake}", "--out", str(out)])
    assert rc == 0
    assert log.read_text().split("\n")[:-1] == [
        "online_softmax 1", "online_softmax 1 bf16",
        "online_softmax 1 bf16", "online_softmax 1",  # round 1: reversed
        "online_softmax 1", "online_softmax 1 bf16",
    ]
    (group,) = json.loads(out.read_text())["groups"]
    assert group["prefill_ratio_rounds"] == pytest.approx([1.2, 0.8, 1.0])
    assert group["prefill_ratio"] == pytest.approx(1.0) and group["decode_speedup"] == pytest.approx(0.5)
    assert group["same_greedy_tokens"]


def test_roofline_compare_measures_ceilings_and_engine_adjacent(synthetic_tiny_export, tmp_path, monkeypatch):
    from pipeline.study import roofline_compare

    order = []
    for name in ("measure_ceilings", "timed_run"):  # spies: the real functions, their calls recorded
        real = getattr(roofline_compare, name)
        monkeypatch.setattr(roofline_compare, name,
                            lambda *a, real=real, name=name, **k: order.append(name) or real(*a, **k))
    out = tmp_path / "roofline_compare.json"
    rc = roofline_compare.main(["--export", str(synthetic_tiny_export), "--threads", "1", "--prompt-len", "8",
                                "--gen-len", "2", "--rounds", "2", "--algos", "standard", "--out", str(out)])
    assert rc == 0
    # a warm-up run, then per round the ceilings and the engine adjacent, the order flipped in round 1
    assert order == ["timed_run", "measure_ceilings", "timed_run", "timed_run", "measure_ceilings"]
    (group,) = json.loads(out.read_text())["groups"]
    assert group["algo"] == "standard" and len(group["rounds"]) == 2
    for r in group["rounds"]:
        assert r["prefill_fraction"] == pytest.approx(r["prefill_gflops"] / r["gemm_gflops"])
        assert r["decode_fraction"] == pytest.approx(r["decode_gb_s"] / r["gemv_gb_s"])
    assert group["decode_fraction"] == pytest.approx(
        (group["rounds"][0]["decode_fraction"] + group["rounds"][1]["decode_fraction"]) / 2)
    assert roofline_compare.main(["--export", str(tmp_path / "missing"), "--threads", "1",
                                  "--out", str(tmp_path / "x.json")]) == 2


def test_report_judges_the_roofline_back_to_back(tmp_path):
    runs = matrix_runs()
    for r in runs:
        r["cell"]["prompt_len"] = 128  # (the name follows the cell)
        r["prefill"]["roofline_fraction"] = 0.7
        r["decode"]["roofline_fraction"] = 0.9
    rounds = [{"gemm_gflops": 100.0, "gemv_gb_s": 20.0, "prefill_gflops": 100.0 * f, "decode_gb_s": 20.0 * f,
               "prefill_fraction": f, "decode_fraction": f} for f in (0.8, 0.76, 0.84)]
    d = {"schema_version": 1, "export": "/x", "dtype": "float32", "threads": 2, "prompt_len": 128,
         "gen_len": 32, "rounds": 3, "groups": [{"algo": "standard", "prefill_fraction": 0.8,
                                                 "decode_fraction": 0.8, "rounds": rounds}]}
    path = tmp_path / "roofline.json"
    path.write_text(json.dumps(d))
    text, _ = run_report(tmp_path, runs, "--roofline-compare", str(path))
    assert (
        "- 1 rank x 2 threads, prompt 128, standard, back to back: prefill at 80.0% (target 75%: **met**) of "
        "the GEMM ceiling, decode at 80.0% (target 85%: **not met**) of the streaming bandwidth (median of 3 "
        "rounds, each measuring the ceilings and one prefill + decode adjacent in time; per round: prefill "
        "80.0% / 76.0% / 84.0%, decode 80.0% / 76.0% / 84.0%; pipeline/study/roofline_compare.py)." in text
    )
    # the standard cells are shown unjudged; online_softmax, not measured back to back, keeps its verdict
    assert (
        "- 1 rank x 2 threads, prompt 128, headwise + standard: prefill at 70.0% of the GEMM ceiling, decode "
        "at 90.0% of the streaming bandwidth in the matrix's cell, its ceilings measured once after its runs "
        "(judged back to back, above)." in text
    )
    assert "headwise + online_softmax: prefill at 70.0% (target 75%: **not met**)" in text


@pytest.mark.parametrize("cores, message", [(3, "3 ranks do not divide num_key_value_heads"),
                                            (2, "export directory not found")])
def test_rank_compare_rejects_bad_input_before_any_run(synthetic_tiny_export, tmp_path, capsys, cores,
                                                       message):
    from pipeline.study import rank_compare

    export = synthetic_tiny_export if cores == 3 else tmp_path / "missing"
    rc = rank_compare.main(["--export", str(export), "--cores", str(cores), "--mpi", "false",
                            "--out", str(tmp_path / "r.json")])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.json").exists()


def test_baseline_on_the_tiny_preset_matches_the_reference(
    synthetic_tiny_checkpoint, synthetic_tiny_export, tmp_path
):
    pytest.importorskip("transformers")
    import numpy as np

    from model_export.reader import open_export
    from pipeline.engine.reference import ReferenceModel
    from pipeline.study import baseline

    out = tmp_path / "hf_p16.json"
    args = [
        "--checkpoint",
        str(synthetic_tiny_checkpoint),
        "--prompt-len",
        "16",
        "--gen-len",
        "3",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert baseline.main(args) == 0
    b = json.loads(out.read_text())
    assert b["available"] and b["cell"]["threads"] == 1 and len(b["prefill"]["seconds"]) == 2
    vocab = PRESETS["tiny"]["vocab_size"]
    prompt = np.random.default_rng(0).integers(0, vocab, 16)  # pipeline.study.bench's prompt
    assert b["output"]["prompt_ids"] == prompt.tolist()
    tokens, logits = ReferenceModel(open_export(synthetic_tiny_export)).generate(prompt.tolist(), 4)
    assert b["output"]["greedy_tokens"] == list(tokens)
    assert b["output"]["prefill_logits"]["first8"] == pytest.approx(logits[0][:8].tolist(), abs=1e-4)
    assert b["decode"]["tokens_per_s"] == pytest.approx(3 / b["decode"]["median_s"])


def test_baseline_without_torch_says_so(tmp_path, monkeypatch):
    from pipeline.study import baseline

    monkeypatch.setattr(baseline, "import_hf", lambda: (None, "torch/transformers not importable: test"))
    out = tmp_path / "hf.json"
    assert baseline.main(["--checkpoint", str(tmp_path), "--prompt-len", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {
        "schema_version": 1,
        "name": "HF transformers (torch)",
        "available": False,
        "reason": "torch/transformers not importable: test",
    }


# ----------------------------------------------------------------------------- Snakemake


def snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def plan(*args: str) -> subprocess.CompletedProcess:
    """A dry run of the repository's workflow that plans every job (--forceall), so what it lists
    does not depend on which results this working tree already holds."""
    return snakemake("-n", "--forceall", *args)


def test_snakemake_lint_is_clean():
    proc = snakemake("--lint")
    assert proc.returncode == 0, proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_dry_run_default_matrix():
    proc = plan("--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    counts = {line.split()[0]: line.split()[1] for line in out.splitlines() if len(line.split()) == 2}
    assert counts["bench"] == "12"  # Qwen3-0.6B has 8 KV heads: 1, 2 and 4 ranks all apply
    assert counts["commbench"] == counts["costmodel"] == counts["baseline"] == "1"
    proc = plan("--quiet", "rules", "--config", "baseline=false", "prompt_lengths=[128,1024]")
    assert proc.returncode == 0, proc.stderr
    counts = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines() if len(line.split()) == 2}
    assert counts["bench"] == "24" and "baseline" not in counts


def test_dry_run_costmodel_gets_the_cluster_config():
    proc = plan(
        "-p",
        "costmodel",
        "--config",
        "synthetic_preset=tiny",
        'cluster={"cores_per_node": 64, "name": "my cluster", "predict_ranks": [1, 8]}',
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "--comm results/comm.json --cluster 'name=my cluster' cores_per_node=64 ranks_per_node=1 "
        "net_alpha_s=2e-06 net_bandwidth_gb_s=12.5 --ranks 1 8 --prompt-lens 128 512" in proc.stdout
    )
    assert "mpiexec -n 2 python -m mpi4py -m pipeline commbench --out results/comm.json" in proc.stdout


def test_dry_run_long_prompts_get_their_own_iterations():
    targets = [f"results/runs/headwise_standard_np1_p{n}.json" for n in (8, 16)]
    proc = plan("-p", *targets, "--config", "synthetic_preset=tiny", "prompt_lengths=[8,16]", "iters=3",
                "warmup=1", "long_prompt_from=16", "long_prompt_iters=2", "long_prompt_warmup=0")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "pipeline bench" in line]
    assert len(lines) == 2
    for line in lines:
        expected = "--iters 2 --warmup 0" if "--prompt-len 16 " in line else "--iters 3 --warmup 1"
        assert expected in line


def test_dry_run_tiny_marks_non_dividing_headwise_cells_not_applicable():
    nkv = PRESETS["tiny"]["num_key_value_heads"]
    p = next(p for p in range(2, 64) if nkv % p)  # a rank count head-wise cannot split the KV heads over
    proc = plan("-p", "report", "--config", "synthetic_preset=tiny", f"ranks=[1,{p}]",
                "prompt_lengths=[2,16]")
    assert proc.returncode == 0, proc.stderr
    jobs = proc.stdout.split("rule verify")[0]
    assert f"results/runs/sequence_online_softmax_np{p}_p16.json" in jobs
    assert f"mpiexec -n {p} python -m mpi4py -m pipeline bench" in jobs
    assert f"headwise_standard_np{p}_p16.json" not in jobs
    assert f"sequence_standard_np{p}_p2.json" not in jobs  # fewer prompt tokens than ranks
    assert f"headwise_standard_np{p}_p16=P={p} does not divide num_key_value_heads={nkv}" in proc.stdout
    assert f"sequence_standard_np{p}_p2=prompt_len=2 gives fewer tokens than the P={p} ranks" in proc.stdout


def test_dry_run_slurm_profile(tmp_path):
    """With the SLURM plugin installed, the profile itself; without it, its settings minus the executor."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401

        profile = ROOT / "profiles" / "slurm"
    except ImportError:
        profile = tmp_path / "slurm"
        profile.mkdir()
        lines = (ROOT / "profiles" / "slurm" / "config.yaml").read_text().splitlines()
        (profile / "config.yaml").write_text("\n".join(x for x in lines if not x.startswith("executor:")))
    proc = plan("-p", "--profile", str(profile), "report", "--config", "synthetic_preset=tiny")
    assert proc.returncode == 0, proc.stderr
    assert "srun -n 2 python -m mpi4py -m pipeline bench" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        (["strategies=[headwise,pipeline]"], "strategies"),
        (["algorithms=[flash]"], "algorithms"),
        (["ranks=[2,4]"], "ranks"),
        (["gen_len=0"], "gen_len"),
        (['cluster={"bogus": 1}'], "'bogus' was unexpected"),
        (['cluster={"net_bandwidth_gb_s": 0}'], "net_bandwidth_gb_s"),
        (["itres=3"], "itres"),
        (["mpi_launcher=no-such-mpiexec"], "config mpi_launcher: 'no-such-mpiexec' not found on PATH"),
        (["checkpoint=no/such/dir"], "config checkpoint: 'no/such/dir' is not a directory"),
        (
            ["synthetic_preset=tiny", "prompt_lengths=[4096]"],
            "config prompt_lengths: 4096 + gen_len 32 exceeds",
        ),
    ],
)
def test_bad_config_fails_at_start_naming_the_field(override, message):
    proc = snakemake("-n", "--config", *override)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_checkpoint_that_is_not_qwen3_fails_at_start(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    proc = snakemake("-n", "--config", f"checkpoint={tmp_path}")
    assert proc.returncode != 0
    assert "is not a Qwen3 checkpoint" in proc.stdout + proc.stderr
    assert "model_type is 'llama'" in proc.stdout + proc.stderr


def test_end_to_end_tiny_with_a_crashing_cell(tmp_path):
    """The whole workflow on the tiny preset in a scratch copy: a complete run, then a run in which
    two cells crash (--keep-going: partial report marking them), then the run that completes it."""
    work = tmp_path / "repo"
    skip = shutil.ignore_patterns(
        ".git", "results", ".snakemake", "build", ".venv", "venv", "q", "*.egg-info", ".pytest_cache"
    )
    shutil.copytree(ROOT, work, ignore=skip)
    config = [
        "--config",
        "synthetic_preset=tiny",
        "ranks=[1,2]",
        "prompt_lengths=[16]",
        "gen_len=4",
        "iters=1",
        "warmup=0",
    ]
    proc = snakemake("--cores", "2", "report", *config, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = work / "results"
    assert "All 8 measured cells match" in (results / "report.md").read_text()
    assert json.loads((results / "verification.json").read_text())["ok"]
    assert (results / "figures" / "throughput_p16.png").exists() and (
        results / "figures" / "cells_p16.png"
    ).exists()
    assert len((results / "summary.csv").read_text().splitlines()) == 9
    # the MPI sweep, the cost model calibrated on it, and the HF baseline, all in the report
    comm = json.loads((results / "comm.json").read_text())
    assert comm["nranks"] == 2 and comm["allreduce"]["alpha_s"] > 0
    costmodel = json.loads((results / "costmodel.json").read_text())
    assert len(costmodel["groups"][0]["cells"]) == 8 and costmodel["groups"][0]["curves"]
    hf = json.loads((results / "baseline" / "hf_p16.json").read_text())
    text = (results / "report.md").read_text()
    for section in (
        "## Cost model",
        "Prediction error over the 4 held-out cells",
        "## Appendix: the cost model's",
        "## Roofline",
        "% of GEMM ceiling",
        "## Compute and communication",
        "## Memory",
    ):
        assert section in text
    assert (results / "figures" / "costmodel.png").exists()
    # float32 against bf16 exports of the same model, back to back: same tokens, a speed-up row each
    dtypes = json.loads((results / "dtype_compare.json").read_text())
    assert [g["nranks"] for g in dtypes["groups"]] == [1, 2]
    assert all(g["same_greedy_tokens"] and g["decode_speedup"] > 0 for g in dtypes["groups"])
    assert "## bf16 weights" in text and "| 1 x 2 |" in text
    # 2 ranks x 1 thread against 1 rank x 2 threads, back to back: same tokens, judged in the report
    ranks = json.loads((results / "rank_compare.json").read_text())
    assert [g["algo"] for g in ranks["groups"]] == ["standard", "online_softmax"]
    assert all(g["same_greedy_tokens"] and len(g["prefill_ratio_rounds"]) == 3 for g in ranks["groups"])
    assert "- head-wise + online_softmax, prompt 128, back to back: 2 ranks x 1 thread reach" in text
    # 1 rank against the ceilings measured beside it, back to back
    roof = json.loads((results / "roofline_compare.json").read_text())
    assert [g["algo"] for g in roof["groups"]] == ["standard", "online_softmax"]
    assert all(len(g["rounds"]) == 3 and g["decode_fraction"] > 0 for g in roof["groups"])
    assert ("| *HF transformers (torch)* |" in text) == hf["available"]
    if hf["available"]:
        assert "Against headwise_standard_np1_p16: greedy tokens identical" in text

    # a launcher that crashes the sequence cells on 2 ranks (test double for a failing benchmark)
    launcher = work / "crashing-mpiexec"
    launcher.write_text(
        '#!/bin/bash\nif [[ "$*" == *"-n 2 "*"--parallel-strategy sequence"* ]]; then\n'
        '  echo "simulated crash" >&2; exit 3\nfi\nexec mpiexec "$@"\n'
    )
    launcher.chmod(0o755)
    for path in (results / "runs").glob("sequence_*_np2_p16.json"):
        path.unlink()
    proc = snakemake("--cores", "2", "--keep-going", "report", *config, f"mpi_launcher={launcher}", cwd=work)
    assert proc.returncode != 0
    text = (results / "report.md").read_text()
    assert "**Partial report.**" in text and "6 of 8 cells measured." in text
    assert "| sequence_standard_np2_p16 | missing |" in text
    assert "simulated crash" in (results / "logs" / "bench" / "sequence_standard_np2_p16.log").read_text()
    assert not (results / "verification.json").exists()
    assert "## Cost model" in text  # the last cost model is kept in the partial report

    proc = snakemake("--cores", "2", "report", *config, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = proc.stdout + proc.stderr
    assert ran.count("rule bench:") == 2  # only the missing cells, then what depends on them
    assert "rule costmodel:" in ran and "rule commbench:" not in ran and "rule baseline:" not in ran
    assert "rule dtype_compare:" not in ran and "rule rank_compare:" not in ran
    assert "rule roofline_compare:" not in ran
    assert "8 of 8 cells measured." in (results / "report.md").read_text()
    proc = snakemake("-n", "report", *config, cwd=work)
    assert "Nothing to be done" in proc.stdout + proc.stderr
