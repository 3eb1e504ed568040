"""The Hugging Face baseline on the tiny synthetic preset."""

from __future__ import annotations

import json

import pytest

from model_export.config import PRESETS


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

