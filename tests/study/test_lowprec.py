"""The low-precision measures against formulas written out independently, on hand-made logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.study import lowprec


def loop_kl(ref_row, low_row) -> float:
    """KL(softmax(ref) || softmax(low)) with Python floats, one token at a time."""
    zp, zq = max(ref_row), max(low_row)
    ep = [math.exp(v - zp) for v in ref_row]
    eq = [math.exp(v - zq) for v in low_row]
    sp, sq = sum(ep), sum(eq)
    return sum(e / sp * math.log((e / sp) / (f / sq)) for e, f in zip(ep, eq, strict=True))


def test_kl_of_a_two_token_case_is_its_closed_form():
    # P = (1/2, 1/2), Q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    kl = lowprec.kl_per_step(np.array([[math.log(3.0), 0.0]]), np.array([[0.0, 0.0]]))
    assert kl.shape == (1,) and kl[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)


def test_measures_match_loop_formulas_on_random_logits():
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 2, (40, 50)).astype(np.float32) + 500.0  # a large offset: exp must not overflow
    low = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    low[5] = ref[5][::-1]  # one step whose top token surely differs
    got = lowprec.measures(low, ref)
    a, b = low.astype(float).ravel().tolist(), ref.astype(float).ravel().tolist()
    want_nmse = sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / sum(y * y for y in b)
    kls = [loop_kl(ref[i].astype(float).tolist(), low[i].astype(float).tolist()) for i in range(40)]
    agree = sum(int(np.argmax(low[i]) == np.argmax(ref[i])) for i in range(40)) / 40
    assert got["steps"] == 40
    assert got["nmse"] == pytest.approx(want_nmse, rel=1e-9)
    assert got["kl_mean"] == pytest.approx(sum(kls) / 40, rel=1e-9)
    assert got["kl_max"] == pytest.approx(max(kls), rel=1e-9)
    assert got["top1_agreement"] == agree and agree < 1


def test_identical_runs_measure_zero_and_full_agreement():
    ref = np.random.default_rng(0).normal(size=(32, 8))
    got = lowprec.measures(ref.copy(), ref)
    assert got["nmse"] == 0 and got["kl_max"] == pytest.approx(0, abs=1e-15) and got["top1_agreement"] == 1


def test_kl_is_shift_invariant_and_not_symmetric():
    ref, low = np.array([[2.0, 0.0, -1.0]]), np.array([[0.0, 1.0, 0.0]])
    assert lowprec.kl_per_step(low + 7, ref - 3)[0] == pytest.approx(lowprec.kl_per_step(low, ref)[0])
    assert lowprec.kl_per_step(low, ref)[0] != pytest.approx(lowprec.kl_per_step(ref, low)[0])


@pytest.mark.parametrize("low, ref, message", [
    (np.zeros((31, 4)), np.zeros((31, 4)), ">= 32 steps"),
    (np.zeros((32, 4)), np.zeros((32, 5)), "one shape"),
    (np.full((32, 4), np.nan), np.zeros((32, 4)), "not all finite"),
])
def test_bad_input_is_refused(low, ref, message):
    with pytest.raises(ValueError, match=message):
        lowprec.measures(low, ref)


def test_teacher_forced_logits_are_the_reference_on_the_same_tokens(synthetic_tiny_export):
    from mpi4py import MPI

    from model_export.reader import open_export
    from pipeline.engine.comm import Comm
    from pipeline.engine.model import Qwen3Engine
    from pipeline.engine.reference import ReferenceModel

    export = open_export(synthetic_tiny_export)
    prompt, tokens = [5, 17, 3, 99, 250], [7, 1, 300, 42]  # not the greedy tokens: forced
    engine = Qwen3Engine(export, "headwise", "online_softmax", Comm(MPI.COMM_SELF), 1, max_seq=16)
    got = lowprec.teacher_forced_logits(engine, np.array(prompt), tokens)
    want = ReferenceModel(export).forward(prompt + tokens[:-1])[len(prompt) - 1:]  # (4, V)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)  # float32 engine vs float64


def bench_with_reference(export, reference, out):
    from tests.mpi import run_mpi

    return run_mpi(1, ["-m", "pipeline", "bench", "--export", str(export), "--reference-export",
                       str(reference), "--parallel-strategy", "headwise", "--attention-algo",
                       "online_softmax", "--prompt-len", "9", "--gen-len", "4", "--iters", "1",
                       "--warmup", "0", "--threads", "1", "--out", str(out)], timeout=300)


def test_bench_records_the_measures_against_a_float32_export(synthetic_tiny_checkpoint,
                                                             synthetic_tiny_export, tmp_path):
    import json

    import jsonschema

    from model_export.export import export_checkpoint
    from tests.mpi import REPO

    int8 = tmp_path / "int8"
    export_checkpoint(synthetic_tiny_checkpoint, int8, dtype="int8", progress=lambda msg: None)
    schema = json.loads((REPO / "pipeline" / "study" / "schemas" / "bench.schema.json").read_text())
    records = {}
    for name, export in (("int8", int8), ("float32", synthetic_tiny_export)):
        proc = bench_with_reference(export, synthetic_tiny_export, tmp_path / f"{name}.json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads((tmp_path / f"{name}.json").read_text())
        jsonschema.validate(result, schema)
        records[name] = result["low_precision"]
        impl = result["implementations"]  # int8 at one token: our int8 GEMV (ext/qgemv.h)
        assert all(("int8" not in name) or v.startswith("gemv-int8:") for v in impl["decode"].values())
        assert impl["decode_layers"] == "one call"
    same, low = records["float32"], records["int8"]
    assert same["steps"] == low["steps"] == lowprec.MIN_STEPS  # gen-len 4 is raised to 32
    assert same["nmse"] == 0 and same["kl_max"] == pytest.approx(0, abs=1e-12) and same["top1_agreement"] == 1
    assert 0 < low["nmse"] < 1e-2 and 0 < low["kl_mean"] <= low["kl_max"]


def test_bench_refuses_a_reference_that_is_not_float32(synthetic_tiny_export,
                                                      synthetic_tiny_export_bf16, tmp_path):
    proc = bench_with_reference(synthetic_tiny_export, synthetic_tiny_export_bf16, tmp_path / "x.json")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "not float32" in errors[0], proc.stderr
