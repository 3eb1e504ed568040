"""The float32 reference run the low-precision cells share (pipeline.study.refcache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mpi4py import MPI

from pipeline.engine.comm import Comm
from pipeline.study import refcache

PROMPT = np.arange(4)


def test_the_first_cell_runs_the_reference_and_later_cells_read_it(tmp_path):
    calls = []
    logits = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)

    def run():
        calls.append(1)
        return [4, 2, 6], logits

    comm = Comm(MPI.COMM_SELF)
    first = refcache.reference_run(comm, tmp_path, "k", "headwise_standard_np1", PROMPT, run)
    second = refcache.reference_run(comm, tmp_path, "k", "sequence_standard_np2", PROMPT, run)
    assert len(calls) == 1
    assert first[2] == {"reference_run": "computed", "reference_cell": "headwise_standard_np1"}
    assert second[2] == {"reference_run": "cached", "reference_cell": "headwise_standard_np1"}
    assert second[0] == [4, 2, 6] and np.array_equal(second[1], logits)
    refcache.reference_run(comm, tmp_path, "other", "x", PROMPT, run)  # another key: run again
    refcache.reference_run(comm, None, "k", "x", PROMPT, run)  # no cache: always run
    assert len(calls) == 3


def test_a_new_entry_removes_those_of_other_code_versions_only(tmp_path):
    logits = np.zeros((1, 3), np.float32)
    comm = Comm(MPI.COMM_SELF)
    old_code = "aaaaaaaaaaaa-" + "1" * 32
    refcache.reference_run(comm, tmp_path, old_code, "x", PROMPT, lambda: ([1], logits))
    (tmp_path / "0123abcd.npz").write_bytes(b"an entry of the format before code prefixes")
    same_code = ["bbbbbbbbbbbb-" + c * 32 for c in "23"]
    for key in same_code:
        refcache.reference_run(comm, tmp_path, key, "x", PROMPT, lambda: ([1], logits))
    assert sorted(f.name for f in tmp_path.glob("*.npz")) == sorted(f"{k}.npz" for k in same_code)


def test_the_key_changes_with_everything_the_run_depends_on(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"files": {"a": "0" * 64}}))
    prompt = np.arange(5)
    base = refcache.reference_key(export, prompt, 32, "standard")
    assert refcache.reference_key(export, prompt, 32, "standard") == base
    assert base.startswith(refcache.code_digest()[:refcache.CODE_CHARS] + "-")
    assert refcache.reference_key(export, prompt[::-1], 32, "standard") != base
    assert refcache.reference_key(export, prompt, 33, "standard") != base
    assert refcache.reference_key(export, prompt, 32, "online_softmax") != base
    (export / "manifest.json").write_text(json.dumps({"files": {"a": "1" * 64}}))
    assert refcache.reference_key(export, prompt, 32, "standard") != base


def test_the_code_digest_covers_the_kernels_and_the_engine(monkeypatch, tmp_path):
    for rel in ("ext/a.so", "pipeline/engine/model.py", "pipeline/engine/strategies/base.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1")
    monkeypatch.setattr(refcache, "ROOT", tmp_path)
    before = refcache.code_digest()
    (tmp_path / "pipeline/engine/strategies/base.py").write_text("v2")
    assert refcache.code_digest() != before


def test_bench_reads_the_reference_a_cell_of_another_layout_ran(synthetic_tiny_checkpoint,
                                                               synthetic_tiny_export, tmp_path):
    """A 2-rank int8 cell reads the float32 run a 1-rank cell left, and measures what it measures
    running the float32 reference itself (up to float32 rounding between the layouts)."""
    from model_export.export import export_checkpoint
    from tests.mpi import run_mpi

    int8 = tmp_path / "int8"
    export_checkpoint(synthetic_tiny_checkpoint, int8, dtype="int8", progress=lambda msg: None)
    cache = tmp_path / "cache"

    def bench(P, out, *extra):
        proc = run_mpi(P, ["-m", "pipeline", "bench", "--export", str(int8), "--reference-export",
                           str(synthetic_tiny_export), *extra, "--parallel-strategy", "headwise",
                           "--attention-algo", "online_softmax", "--prompt-len", "9", "--gen-len", "4",
                           "--iters", "1", "--warmup", "0", "--threads", str(P), "--out", str(out)],
                       timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text())["low_precision"]

    first = bench(1, tmp_path / "a.json", "--reference-cache", str(cache))
    cached = bench(2, tmp_path / "b.json", "--reference-cache", str(cache))
    own = bench(2, tmp_path / "c.json")
    assert first["reference_run"] == "computed" and len(list(cache.glob("*.npz"))) == 1
    assert cached["reference_run"] == "cached"
    assert cached["reference_cell"] == "headwise_online_softmax_np1"
    assert own["reference_run"] == "computed" and own["reference_cell"] == "headwise_online_softmax_np2"
    assert cached["nmse"] == pytest.approx(own["nmse"], rel=1e-3)
    assert cached["top1_agreement"] == own["top1_agreement"]
