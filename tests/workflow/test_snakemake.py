"""The workflow through Snakemake: lint, dry runs of every configuration, bad config, end to end on tiny."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_export.config import PRESETS

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))



# ----------------------------------------------------------------------------- Snakemake


def snakemake(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


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
    # Qwen3-0.6B: 3 strategies at 1 and 2 ranks, both algorithms on float32, online_softmax on bf16
    # and int8 (low_precision_algorithms); one export per dtype
    assert counts["bench"] == str(6 * 2 + 6 + 6) and counts["export"] == "3"
    assert counts["commbench"] == counts["costmodel"] == "1" and "baseline" not in counts
    proc = plan("--quiet", "rules", "--configfile", "config/full.yaml",
                "--config", "prompt_lengths=[128,1024]")
    assert proc.returncode == 0, proc.stderr
    counts = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines() if len(line.split()) == 2}
    # the full matrix: 3 strategies at 1, 2 and 4 ranks plus layer2.headwise2 (4 ranks), 2 algorithms,
    # 3 dtypes, 2 prompt lengths; the HF baseline at each length
    assert counts["bench"] == str((3 * 3 + 1) * 2 * 3 * 2) and counts["baseline"] == "2"


def test_dry_run_low_precision_cells_are_measured_against_float32():
    targets = [f"results/runs/headwise_standard_np2_p16{suffix}.json" for suffix in ("", "_bf16", "_int8")]
    proc = plan("-p", *targets, "--config", "synthetic_preset=tiny", "prompt_lengths=[16]")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("--out ")[1].split()[0]: line for line in proc.stdout.splitlines()
             if "pipeline bench" in line}
    export = "results/work/export/synthetic-tiny-seed0"
    assert f"--export {export}-float32 --parallel-strategy headwise" in lines[targets[0]]
    for target, dtype in zip(targets[1:], ("bf16", "int8"), strict=True):
        assert f"--export {export}-{dtype} --reference-export {export}-float32 " in lines[target]


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


def test_dry_run_comparisons_follow_their_config_block():
    proc = plan("-p", "report", "--config", "synthetic_preset=tiny", "dtypes=[int8,float32]",
                'comparisons={"ranks": false, "dtype": true, "ceilings": true, "rounds": 2}')
    assert proc.returncode == 0, proc.stderr
    out, export = proc.stdout, "results/work/export/synthetic-tiny-seed0"
    assert f"pipeline compare dtype --export {export}-float32 {export}-bf16 --ranks 1 2 " in out
    # one export per dtype of the matrix, float32 first (the reference), each dtype's cell beside the ceilings
    assert f"pipeline compare ceilings --export {export}-float32 {export}-int8 --algos online_softmax " in out
    assert "--rounds 2 " in out and "pipeline compare ranks" not in out
    assert "--compare results/compare/dtype.json results/compare/ceilings.json " in out


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


def test_dry_run_tiny_marks_cells_that_cannot_split_not_applicable():
    heads, layers = PRESETS["tiny"]["num_attention_heads"], PRESETS["tiny"]["num_hidden_layers"]
    p = heads + 1  # more ranks than query heads (and than layers)
    proc = plan("-p", "report", "--config", "synthetic_preset=tiny", f"ranks=[1,{p}]",
                "prompt_lengths=[2,16]", "layouts=[layer2.headwise2]", "dtypes=[float32]")
    assert proc.returncode == 0, proc.stderr
    jobs = proc.stdout.split("rule verify")[0]
    assert f"results/runs/sequence_online_softmax_np{p}_p16.json" in jobs
    assert f"mpiexec -n {p} python -m mpi4py -m pipeline bench" in jobs
    assert "results/runs/layer2.headwise2_standard_np4_p16.json" in jobs  # a two-level layout
    assert f"headwise_standard_np{p}_p16.json" not in jobs
    assert f"layer_standard_np{p}_p16.json" not in jobs
    assert f"sequence_standard_np{p}_p2.json" not in jobs  # fewer prompt tokens than ranks
    reasons = {  # the engine's own reasons (pipeline.engine.partition), one per cell that cannot run
        f"headwise_standard_np{p}_p16": f"headwise: {p} ranks exceed the {heads} query heads",
        f"layer_standard_np{p}_p16": f"layer: {p} stages exceed the {layers} layers",
        f"sequence_standard_np{p}_p2": f"sequence: the prompt has 2 tokens, fewer than the {p} ranks"}
    for cell, reason in reasons.items():
        assert f"{cell}={reason}" in proc.stdout


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
        (["dtypes=[float32,fp8]"], "'fp8' is not one of ['float32', 'bf16', 'int8']"),
        (["ranks=[2,4]"], "ranks"),
        (["gen_len=0"], "gen_len"),
        (['cluster={"bogus": 1}'], "'bogus' was unexpected"),
        (['cluster={"net_bandwidth_gb_s": 0}'], "net_bandwidth_gb_s"),
        (['comparisons={"rounds": 0}'], "0 is less than the minimum of 1"),
        (['comparisons={"flops": true}'], "'flops' was unexpected"),
        (["itres=3"], "itres"),
        (["mpi_launcher=no-such-mpiexec"], "config mpi_launcher: 'no-such-mpiexec' not found on PATH"),
        (["checkpoint=no/such/dir"], "config checkpoint: 'no/such/dir' is not a directory"),
        (
            ["synthetic_preset=tiny", "prompt_lengths=[4096]"],
            "config prompt_lengths: 4096 + gen_len 32 exceeds",
        ),
        (
            ["synthetic_preset=tiny", 'comparisons={"gen_len": 5000}'],
            "config comparisons.gen_len: 128 + 5000 exceeds",
        ),
        (['comparisons={"gen_len": 0}'], "0 is less than the minimum of 1"),
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
        "strategies=[headwise,layer]",  # and layer2.headwise2: 10 cells per dtype
        "layouts=[layer2.headwise2]",
        "dtypes=[float32,int8]",
        "low_precision_algorithms=[standard,online_softmax]",  # both on int8 too, as before
        "ranks=[1,2]",
        'comparisons={"dtype": true, "ranks": true, "ceilings": true}',
        "baseline=true",
        "prompt_lengths=[16]",
        "gen_len=4",
        "iters=1",
        "warmup=0",
    ]
    # --cores 8 on this 2-core machine, as README's command: cores to spare beside each benchmark
    proc = snakemake("--cores", "8", "report", *config, cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_measurements_ran_alone(proc.stdout + proc.stderr)
    results = work / "results"
    check_complete_run(results)
    check_partial_run_then_completion(work, results, config)


MEASUREMENTS = {"bench", "compare", "commbench", "netcal", "baseline"}


def assert_measurements_ran_alone(log: str) -> None:
    """In Snakemake's log of a run, no job starts while a measurement runs, and no measurement
    starts while another job runs (profiles/default's `machine` resource)."""
    running: dict[str, str] = {}  # jobid -> rule
    rule, measured = None, 0
    for line in log.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            rule = m[1]
        elif (m := re.match(r"\s+jobid: (\d+)$", line)) and rule:
            others = set(running.values())
            assert not (rule in MEASUREMENTS and others), f"{rule} started beside {others}"
            assert not (others & MEASUREMENTS), f"{rule} started beside {others & MEASUREMENTS}"
            measured += rule in MEASUREMENTS
            running[m[1]], rule = rule, None
        elif m := re.match(r"Finished jobid: (\d+)", line):
            running.pop(m[1], None)
    assert measured > 20  # the log was read: the cells, comparisons, sweep, calibration, baseline


def check_complete_run(results: Path) -> None:
    """A complete tiny run: every cell verified, the sweep, the cost model, baseline, comparisons."""
    assert "All 20 measured cells match" in (results / "report.md").read_text()
    assert json.loads((results / "verification.json").read_text())["ok"]
    assert (results / "figures" / "throughput_p16.png").exists() and (
        results / "figures" / "cells_p16.png"
    ).exists()
    assert len((results / "summary.csv").read_text().splitlines()) == 21
    # the MPI sweep, the cost model calibrated on it, and the HF baseline, all in the report
    comm = json.loads((results / "comm.json").read_text())
    assert comm["nranks"] == 2 and comm["allreduce"]["alpha_s"] > 0
    costmodel = json.loads((results / "costmodel.json").read_text())
    assert len(costmodel["groups"][0]["cells"]) == 10 and costmodel["groups"][0]["curves"]  # float32's
    hf = json.loads((results / "baseline" / "hf_p16.json").read_text())
    text = (results / "report.md").read_text()
    for section in (
        "## Cost model",
        "Prediction error over the 6 held-out cells",  # multi-rank: headwise, layer, layer2.headwise2
        "## Appendix: the cost model's",
        "## Roofline",
        "% of GEMM ceiling",
        "## Compute and communication",
        "## Memory",
    ):
        assert section in text
    assert (results / "figures" / "costmodel.png").exists()
    # the back-to-back comparisons: bf16 over float32 at 1 and 2 ranks, 2 x 1 over 1 x 2, engine over ceilings
    compared = {name: json.loads((results / "compare" / f"{name}.json").read_text())
                for name in ("dtype", "ranks", "ceilings")}
    assert [v["name"] for v in compared["dtype"]["variants"]] == [
        "float32_np1", "bfloat16_np1", "float32_np2", "bfloat16_np2"]
    assert [v["name"] for v in compared["ranks"]["variants"]] == [
        "float32_online_softmax_np1", "float32_online_softmax_np2", "int8_online_softmax_np1",
        "int8_online_softmax_np2"]
    assert [v["name"] for v in compared["ceilings"]["variants"]] == [
        "ceilings", "float32_online_softmax_np1", "int8_online_softmax_np1"]
    # every int8 cell measured against float32 over >= 32 teacher-forced steps
    for path in (results / "runs").glob("*_int8.json"):
        low = json.loads(path.read_text())["low_precision"]
        assert low["steps"] >= 32 and 0 < low["nmse"] < 1e-2 and low["top1_agreement"] > 0.5
    for doc in compared.values():
        others = [v for v in doc["variants"] if v["reference"]]
        assert all(len(v["ratio_rounds"]["prefill"]) == 3 and v["ratio"]["decode"] > 0 for v in others)
        assert all(v["tokens_agree"] is not False for v in others)
        assert f"### {doc['name']}: {doc['question']}" in text
    assert ("| *HF transformers (torch)* |" in text) == hf["available"]
    if hf["available"]:
        assert "Against headwise_standard_np1_p16: greedy tokens identical" in text



def check_partial_run_then_completion(work: Path, results: Path, config: list[str]) -> None:
    """Two cells crash (--keep-going): a partial report marks them; the next run redoes only them."""
    # a launcher that crashes the layer cells on 2 ranks (test double for a failing benchmark)
    launcher = work / "crashing-mpiexec"
    launcher.write_text(
        '#!/bin/bash\nif [[ "$*" == *"-n 2 "*"--parallel-strategy layer "* ]]; then\n'
        '  echo "simulated crash" >&2; exit 3\nfi\nexec mpiexec "$@"\n'
    )
    launcher.chmod(0o755)
    for path in (results / "runs").glob("layer_*_np2_p16.json"):  # float32's (int8's end in _int8)
        path.unlink()
    proc = snakemake("--cores", "2", "--keep-going", "report", *config, f"mpi_launcher={launcher}", cwd=work,
                     timeout=600)
    assert proc.returncode != 0
    text = (results / "report.md").read_text()
    assert "**Partial report.**" in text and "18 of 20 cells measured." in text
    assert "| layer_standard_np2_p16 | missing |" in text
    assert "simulated crash" in (results / "logs" / "bench" / "layer_standard_np2_p16.log").read_text()
    assert not (results / "verification.json").exists()
    assert "## Cost model" in text  # the last cost model is kept in the partial report

    proc = snakemake("--cores", "2", "report", *config, cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = proc.stdout + proc.stderr
    assert ran.count("rule bench:") == 2  # only the missing cells, then what depends on them
    assert "rule costmodel:" in ran and "rule commbench:" not in ran and "rule baseline:" not in ran
    assert "rule compare:" not in ran
    assert "20 of 20 cells measured." in (results / "report.md").read_text()
    proc = snakemake("-n", "report", *config, cwd=work)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_one_cell_across_two_emulated_nodes(tmp_path):
    """config emulated_cluster: the cell's ranks run on two namespaced nodes; the cluster is gone after."""
    from pipeline.study import cluster

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the emulated cluster needs root and iproute2")
    work = tmp_path / "repo"
    skip = shutil.ignore_patterns(".git", "results", ".snakemake", "build", ".venv", "venv", "*.egg-info")
    shutil.copytree(ROOT, work, ignore=skip)
    cell = "results/runs/headwise_standard_np2_p16.json"
    config = ["synthetic_preset=tiny", "prompt_lengths=[16]", "gen_len=4", "iters=1", "warmup=0",
              "emulated_cluster={nodes: 2, link_gbit: 1}"]
    proc = snakemake("--cores", "2", cell, "--config", *config, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((work / cell).read_text())
    assert run["environment"]["hosts"] == ["node0", "node1"]
    assert run["decode"]["transfer_s"] > 0 and len(run["decode"]["per_rank"]["wait_s"]) == 2
    assert not any(ns.startswith("qp-") for ns in cluster.namespaces())  # taken down at the end
