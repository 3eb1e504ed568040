"""llama.cpp (pipeline.study.llamacpp) on GGUF files of a tiny synthetic checkpoint, against our float64
reference (pipeline.engine.reference) on the same checkpoint and prompt ids.

The checkpoint is the `tiny` preset in float32 with its matrices scaled by 20: at the preset's
std 0.02 every greedy token is the same id, which would let a wrong model pass. An f32 GGUF with
an f32 KV cache and flash attention off computes what our float32 engine computes: the same greedy
tokens, logits within float32 rounding of another summation order. (llama.cpp's default flash
attention keeps its KQ mask and softmax accumulators in f16: 3e-4 relative, measured.) bf16 and
q8_0 files only within their weights' rounding. Needs llama-cpp-python (the `baselines` extra).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_export.config import PRESETS
from model_export.export import export_checkpoint
from model_export.synthetic import write_checkpoint
from pipeline.engine.prompts import random_prompt
from pipeline.study import llamacpp

GEN = 8
PROMPT = 24
SCALE = 20.0  # of the matrices: logits of std ~4, greedy tokens that change every step
# max |logits - reference| over the largest |reference logit|, per GGUF dtype: f32 is float32
# accumulation in another order (5e-7 measured; 1e-5 leaves room for other CPUs' kernels); bf16
# rounds weights (and llama.cpp the activations) to 8 bits of mantissa (0.015 measured), Q8_0
# weights to 1/254 of each block's max and activations to int8 per block (0.042 measured).
TOLERANCE = {"f32": 1e-5, "bf16": 0.05, "q8_0": 0.1}


def need_llama_cpp():
    lib, reason = llamacpp.import_llama()
    if lib is None:
        pytest.skip(f"llama-cpp-python is not installed ({reason}); bash envs/llama-cpp.sh")
    return lib


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    """(checkpoint, export) of the tiny preset in float32 with its matrices scaled by SCALE."""
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("lively")
    ckpt = write_checkpoint("tiny", root / "ckpt", seed=1, dtype="float32")
    weights = load_file(ckpt / "model.safetensors")
    scaled = {k: v if k.endswith("norm.weight") else v * np.float32(SCALE) for k, v in weights.items()}
    save_file(scaled, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    export_checkpoint(ckpt, root / "export", progress=lambda msg: None)
    return ckpt, root / "export"


@pytest.fixture(scope="module")
def ggufs(lively, tmp_path_factory) -> dict:
    pytest.importorskip("gguf", reason="the gguf package (extra `baselines`) is not installed")
    from model_export.gguf import write_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {d: write_gguf(lively[0], out / f"tiny-{d}.gguf", d)["out"] for d in ("f32", "bf16", "q8_0")}


@pytest.fixture(scope="module")
def reference(lively):
    from model_export.reader import open_export
    from pipeline.engine.reference import ReferenceModel

    prompt = [int(t) for t in random_prompt(0, PRESETS["tiny"]["vocab_size"], PROMPT)]
    tokens, logits = ReferenceModel(open_export(lively[1])).generate(prompt, GEN + 1)
    assert len(set(tokens)) > GEN // 2  # the test's own premise: tokens that change
    return prompt, tokens, logits


def llama_logits(lib, path: str, prompt: list[int], tokens: list[int], kv_type: str) -> np.ndarray:
    """llama.cpp's logits after the prompt and after each of tokens[:-1] (teacher forcing: our tokens)."""
    session = llamacpp.open_session(lib, path, 1, len(prompt) + len(tokens) + 1, 512, kv_type, "off")
    try:
        return llamacpp.teacher_forced(session, prompt, list(tokens))
    finally:
        session.close()


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0"])
def test_logits_follow_the_reference(dtype, ggufs, reference):
    lib = need_llama_cpp()
    prompt, tokens, want = reference
    got = llama_logits(lib, ggufs[dtype], prompt, tokens, "f32")
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert np.abs(got - want).max() / scale < TOLERANCE[dtype]
    if dtype == "f32":
        np.testing.assert_array_equal(got.argmax(axis=1), tokens)


def test_the_runner_generates_the_reference_greedy_tokens(ggufs, reference, tmp_path):
    need_llama_cpp()
    prompt, tokens, logits = reference
    out = tmp_path / "llama.json"
    args = ["--gguf", ggufs["f32"], "--prompt-len", str(PROMPT), "--gen-len", str(GEN), "--iters", "2",
            "--warmup", "1", "--threads", "1", "--kv-type", "f32", "--flash-attn", "off", "--out", str(out)]
    assert llamacpp.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["available"] and doc["cell"]["threads"] == 1 and len(doc["prefill"]["seconds"]) == 2
    assert doc["output"]["prompt_ids"] == prompt  # the bench's prompt: the same ids
    assert doc["output"]["greedy_tokens"] == list(tokens)  # the prefill's token, then GEN steps
    assert doc["output"]["prefill_logits"]["first8"] == pytest.approx(logits[0][:8].tolist(), abs=1e-4)
    assert doc["decode"]["tokens_per_s"] == pytest.approx(GEN / doc["decode"]["median_s"])
    assert doc["model"]["gguf"]["file_type"] == "ALL_F32" and doc["model"]["n_vocab"] == 512
    env = doc["environment"]
    assert env["llama_cpp_python"] and "CPU" in env["system_info"] and env["kv_type"] == "f32"


def test_the_runner_measures_itself_against_a_reference_run(ggufs, lively, tmp_path):
    """--reference: llama.cpp teacher-forced on the float64 model's 32 greedy tokens, its NMSE against
    that run's logits; f32 within float32 rounding, q8_0 within its 8-bit weights and activations."""
    need_llama_cpp()
    from model_export.reader import open_export
    from pipeline.engine.reference import ReferenceModel
    from pipeline.study import refcache
    from pipeline.study.lowprec import MIN_STEPS

    prompt = random_prompt(0, PRESETS["tiny"]["vocab_size"], PROMPT)
    tokens, logits = ReferenceModel(open_export(lively[1])).generate(prompt.tolist(), MIN_STEPS)
    ref = tmp_path / "run.npz"
    refcache.store(ref, list(tokens), np.asarray(logits, np.float32), "float64", prompt)
    nmse = {}
    for dtype in ("f32", "q8_0"):
        out = tmp_path / f"{dtype}.json"
        args = ["--gguf", ggufs[dtype], "--prompt-len", str(PROMPT), "--gen-len", "2", "--iters", "1",
                "--warmup", "0", "--threads", "1", "--kv-type", "f32", "--flash-attn", "off",
                "--reference", str(ref), "--out", str(out)]
        assert llamacpp.main(args) == 0
        low = json.loads(out.read_text())["low_precision"]
        assert low["steps"] == MIN_STEPS
        nmse[dtype] = low["nmse"]
    assert nmse["f32"] < 1e-9  # float32 in another summation order
    assert nmse["f32"] < nmse["q8_0"] < 1e-2


def test_a_file_llama_cpp_cannot_load_is_one_error(tmp_path, capsys):
    need_llama_cpp()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    assert llamacpp.main(["--gguf", str(bad), "--out", str(tmp_path / "x.json")]) == 1
    assert "could not load" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_without_llama_cpp_python_the_json_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(llamacpp, "import_llama", lambda: (None, "llama-cpp-python not importable: test"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "llama.json"
    assert llamacpp.main(["--gguf", str(gguf), "--prompt-len", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"schema_version": 1, "name": "llama.cpp", "available": False,
                                           "reason": "llama-cpp-python not importable: test"}


def test_bad_arguments_fail_before_loading(tmp_path):
    with pytest.raises(SystemExit):
        llamacpp.parse_args(["--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "x.json")])
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(SystemExit):
        llamacpp.parse_args(["--gguf", str(tmp_path / "m.gguf"), "--gen-len", "0", "--out", "x.json"])
