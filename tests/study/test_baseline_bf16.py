"""The Hugging Face baseline in bf16 (`python -m pipeline baseline --dtype bf16`) on the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_bf16_baseline_runs_in_bf16_and_stays_near_the_reference(
    synthetic_tiny_checkpoint, synthetic_tiny_export, tmp_path
):
    pytest.importorskip("transformers")
    from model_export.reader import open_export
    from pipeline.engine.reference import ReferenceModel
    from pipeline.study import baseline

    out = tmp_path / "hf_bf16.json"
    args = ["--checkpoint", str(synthetic_tiny_checkpoint), "--prompt-len", "16", "--gen-len", "3",
            "--iters", "1", "--warmup", "0", "--threads", "1", "--dtype", "bf16", "--out", str(out)]
    assert baseline.main(args) == 0
    b = json.loads(out.read_text())
    assert b["available"] and b["model"]["dtype"] == "bf16"
    assert b["environment"]["onednn_bf16"] in (True, False, None)
    prompt = b["output"]["prompt_ids"]
    _, logits = ReferenceModel(open_export(synthetic_tiny_export)).generate(prompt, 4)
    assert len(b["output"]["greedy_tokens"]) == 4
    # bf16 activations: 8 bits of mantissa through 2 layers (0.3% of the largest logit measured)
    got = np.array(b["output"]["prefill_logits"]["first8"])
    assert np.abs(got - logits[0][:8]).max() < 0.02 * np.abs(logits[0]).max()
    assert np.abs(got - logits[0][:8]).max() > 1e-6  # it did not run in float32


def test_an_unknown_dtype_is_refused_before_loading(tmp_path):
    from pipeline.study import baseline

    with pytest.raises(SystemExit):
        baseline.parse_args(["--checkpoint", str(tmp_path), "--dtype", "float16", "--out", "x.json"])
