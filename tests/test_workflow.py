"""The workflow: verify and report on fabricated bench JSONs, and Snakemake's own checks.

The bench JSONs here are TEST DATA made up by `fake_run` (shaped like pipeline/bench.py's output,
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
from pipeline import report, verify

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


def test_report_optional_sections(tmp_path):
    runs = matrix_runs()
    for r in runs:
        r["roofline"] = {
            "gemm_gflops": 250.0,
            "stream_gbps": 25.0,
            "prefill_fraction": 0.8,
            "decode_fraction": 0.9,
        }
        r["environment"]["oversubscribed"] = r["cell"]["nranks"] > 1
    # shaped like pipeline.costmodel's output (test data)
    curves = [
        {
            "strategy": "headwise",
            "attention_algo": "standard",
            "nranks": p,
            "prompt_len": n,
            "feasible": p <= 8,
            "prefill_tok_s": 100.0 * p**0.5,
            "decode_tok_s": 10.0 * p**0.5,
        }
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
        }
    ]
    costmodel = {
        "equations_md": "t_prefill = flops / rate + layers * 2 * (alpha + bytes / beta)",
        "groups": [
            {
                "calibration": {"standard": {"alpha_s": 2e-6}},
                "error": {"held_out_cells": 1},
                "cells": cells,
                "curves": curves,
            }
        ],
    }
    (tmp_path / "cm.json").write_text(json.dumps(costmodel))
    text, rows = run_report(tmp_path, runs, "--costmodel", str(tmp_path / "cm.json"))
    assert "## Roofline" in text and "prefill_fraction" in text
    assert "## Cost model" in text and "Appendix: the cost model's equations" in text
    assert "| headwise_standard_np2_p16 | prefill | 100 | 141 | +41% | held out |" in text
    assert "| headwise_standard_np2_p16 | decode | 10.0 | 9.0 | -10% | held out |" in text
    assert "| 32768 | 100 | 141 | — |" in text  # predicted beyond the measured lengths; P=64 infeasible
    assert "standard.alpha_s" in text
    assert "† marks oversubscribed cells" in text and "online_softmax †" in text
    assert rows[0]["roofline.prefill_fraction"] == "0.8"


# ----------------------------------------------------------------------------- Snakemake


def snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_snakemake_lint_is_clean():
    proc = snakemake("--lint")
    assert proc.returncode == 0, proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_dry_run_default_matrix():
    proc = snakemake("-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    bench_line = next(line for line in out.splitlines() if line.split()[:1] == ["bench"])
    assert bench_line.split()[1] == "12"  # Qwen3-0.6B has 8 KV heads: 1, 2 and 4 ranks all apply


def test_dry_run_tiny_marks_non_dividing_headwise_cells_not_applicable():
    nkv = PRESETS["tiny"]["num_key_value_heads"]
    p = next(p for p in range(2, 64) if nkv % p)  # a rank count head-wise cannot split the KV heads over
    proc = snakemake(
        "-n", "-p", "report", "--config", "synthetic_preset=tiny", f"ranks=[1,{p}]", "prompt_lengths=[2,16]"
    )
    assert proc.returncode == 0, proc.stderr
    jobs = proc.stdout.split("rule verify")[0]
    assert f"results/runs/sequence_online_softmax_np{p}_p16.json" in jobs
    assert f"mpiexec -n {p} python -m mpi4py -m pipeline.bench" in jobs
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
    proc = snakemake("-n", "-p", "--profile", str(profile), "report", "--config", "synthetic_preset=tiny")
    assert proc.returncode == 0, proc.stderr
    assert "srun -n 2 python -m mpi4py -m pipeline.bench" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        (["strategies=[headwise,pipeline]"], "strategies"),
        (["algorithms=[flash]"], "algorithms"),
        (["ranks=[2,4]"], "ranks"),
        (["gen_len=0"], "gen_len"),
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
    skip = shutil.ignore_patterns(".git", "results", ".snakemake", "build", ".venv", "venv", "q",
                                  "*.egg-info", ".pytest_cache")
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

    proc = snakemake("--cores", "2", "report", *config, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = proc.stdout + proc.stderr
    assert ran.count("rule bench:") == 2  # only the missing cells
    assert "8 of 8 cells measured." in (results / "report.md").read_text()
    proc = snakemake("-n", "report", *config, cwd=work)
    assert "Nothing to be done" in proc.stdout + proc.stderr
