"""Baselines measured against a float32 run: `baseline --reference` (torch), `compare baselines
--reference-cache` (every variant, ours and theirs, against one run), and the checks of a reference
file (pipeline.study.lowprec.load_reference).

The torch test's reference is our float64 NumPy model (pipeline.engine.reference), independent of
the engine and of torch; the comparison's is our float32 engine's run, which it makes itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_export.config import PRESETS
from pipeline.engine.prompts import random_prompt
from pipeline.study import lowprec, refcache

PROMPT, STEPS = 16, lowprec.MIN_STEPS


def store_run(path, tokens, logits, prompt) -> None:
    refcache.store(path, list(tokens), np.asarray(logits, np.float32), "test", np.asarray(prompt))


def test_a_reference_of_another_prompt_or_of_too_few_steps_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((STEPS, 11)).astype(np.float32)
    store_run(tmp_path / "a.npz", logits.argmax(axis=1), logits, range(5))
    tokens, got = lowprec.load_reference(tmp_path / "a.npz", [0, 1, 2, 3, 4])
    assert tokens == logits.argmax(axis=1).tolist() and np.array_equal(got, logits)
    with pytest.raises(ValueError, match="another prompt"):
        lowprec.load_reference(tmp_path / "a.npz", [0, 1, 2, 3, 5])
    store_run(tmp_path / "b.npz", logits[:-1].argmax(axis=1), logits[:-1], range(5))
    with pytest.raises(ValueError, match=f">= {STEPS} steps"):
        lowprec.load_reference(tmp_path / "b.npz", range(5))
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a reference run"):
        lowprec.load_reference(tmp_path / "c.npz", range(5))


@pytest.fixture(scope="module")
def float64_run(synthetic_tiny_export, tmp_path_factory):
    """Our float64 NumPy model's greedy run of the bench's prompt, stored as a reference run."""
    from model_export.reader import open_export
    from pipeline.engine.reference import ReferenceModel

    prompt = random_prompt(0, PRESETS["tiny"]["vocab_size"], PROMPT)
    tokens, logits = ReferenceModel(open_export(synthetic_tiny_export)).generate(prompt.tolist(), STEPS)
    path = tmp_path_factory.mktemp("reference") / "run.npz"
    store_run(path, tokens, logits, prompt)
    return path


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_torch_is_measured_against_the_reference(dtype, synthetic_tiny_checkpoint, float64_run, tmp_path):
    pytest.importorskip("transformers")
    from pipeline.study import baseline

    out = tmp_path / "hf.json"
    assert baseline.main(["--checkpoint", str(synthetic_tiny_checkpoint), "--dtype", dtype,
                          "--prompt-len", str(PROMPT), "--gen-len", "2", "--iters", "1", "--warmup", "0",
                          "--threads", "1", "--reference", str(float64_run), "--out", str(out)]) == 0
    low = json.loads(out.read_text())["low_precision"]
    assert low["steps"] == STEPS and low["reference"] == str(float64_run)
    if dtype == "float32":  # torch float32 computes what the float64 model computes, up to rounding
        assert low["nmse"] < 1e-9 and low["top1_agreement"] == 1.0
    else:  # bf16 weights and activations: 8 bits of mantissa, an NMSE of 1e-5..1e-4 (2.9e-5 measured)
        assert 1e-7 < low["nmse"] < 1e-3


def test_torch_refuses_a_reference_of_another_prompt(synthetic_tiny_checkpoint, float64_run, tmp_path,
                                                     capsys):
    pytest.importorskip("transformers")
    from pipeline.study import baseline

    out = tmp_path / "hf.json"
    rc = baseline.main(["--checkpoint", str(synthetic_tiny_checkpoint), "--prompt-len", str(PROMPT + 1),
                        "--iters", "1", "--warmup", "0", "--reference", str(float64_run), "--out", str(out)])
    assert rc == 1 and not out.exists()
    assert "another prompt" in capsys.readouterr().err


def test_compare_measures_every_variant_against_one_float32_run(synthetic_tiny_checkpoint,
                                                                synthetic_tiny_export,
                                                                synthetic_tiny_export_bf16, tmp_path):
    pytest.importorskip("transformers")
    from pipeline.study import compare

    cache, out = tmp_path / "refs", tmp_path / "compare" / "baselines.json"
    rc = compare.main(["baselines", "--export", str(synthetic_tiny_export), str(synthetic_tiny_export_bf16),
                       "--checkpoint", str(synthetic_tiny_checkpoint), "--baselines", "torch",
                       "--threads", "1", "--prompt-len", str(PROMPT), "--gen-len", "2", "--iters", "1",
                       "--warmup", "0", "--rounds", "1", "--reference-cache", str(cache), "--out", str(out)])
    assert rc == 0
    acc = {v["name"]: v["accuracy"] for v in json.loads(out.read_text())["variants"]}
    assert set(acc) == {"ours_float32", "torch_float32", "ours_bfloat16", "torch_bf16"}
    assert all(a["steps"] == STEPS for a in acc.values())
    assert acc["ours_float32"]["nmse"] < 1e-12  # the reference run is this engine's, on this export
    assert acc["torch_float32"]["nmse"] < 1e-9
    assert all(1e-7 < acc[name]["nmse"] < 1e-3 for name in ("ours_bfloat16", "torch_bf16"))
    assert len(list(cache.glob("*.npz"))) == 1  # made once, before the rounds; the cells read it
    bench_bf16 = json.loads((out.with_suffix("") / "ours_bfloat16_r0.json").read_text())
    assert bench_bf16["low_precision"]["reference_run"] == "cached"


def test_compare_accuracy_needs_a_float32_export(synthetic_tiny_export_bf16, tmp_path, capsys):
    from pipeline.study import compare

    rc = compare.main(["baselines", "--export", str(synthetic_tiny_export_bf16), "--baselines",
                       "--threads", "1", "--reference-cache", str(tmp_path),
                       "--out", str(tmp_path / "b.json")])
    assert rc == 2 and "float32 export" in capsys.readouterr().err
