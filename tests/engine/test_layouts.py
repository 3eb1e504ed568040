"""The layouts beyond one even split: layer (pipeline) stages, head-wise at rank counts that do
not divide the KV heads or exceed them (KV-head replication), and two-level layouts, each run
through the real command line under `mpiexec -n P` and held against the NumPy float64 reference
(every step's logits, greedy tokens) and, for some, Hugging Face on the same random weights.

The prompt has 11 tokens, which no P here divides; layer cells stream it in micro-batches of 4
(4 + 4 + 3), so the pipeline's batching is exercised, not skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

from model_export.reader import open_export
from pipeline.engine.reference import ReferenceModel
from tests.mpi import generate, run_mpi
from tests.tiny import TINY_BASE

ATOL = 1e-4  # as tests/engine/test_engine.py: float32 engine against float64, two orders of margin
PROMPT = [3, 141, 59, 26, 53, 58, 97, 93, 23, 84, 62]
NEW_TOKENS = 6
# GQA ratios 1, 2 and 4 with 8, 4 and 2 KV heads (8 query heads, so head-wise runs up to P = 8),
# and one KV head shared by 4 query heads; 4 layers so that 4 stages each hold one.
LAYER_BASE = dict(TINY_BASE, head_dim=16, num_hidden_layers=4, intermediate_size=120,
                  tie_word_embeddings=False)
GQA = {
    "kv8_ratio1": dict(LAYER_BASE, num_attention_heads=8, num_key_value_heads=8),
    "kv4_ratio2": dict(LAYER_BASE, num_attention_heads=8, num_key_value_heads=4),
    "kv2_ratio4": dict(LAYER_BASE, num_attention_heads=8, num_key_value_heads=2),
    "kv1_ratio4": dict(LAYER_BASE, num_attention_heads=4, num_key_value_heads=1),
}
ALGOS = ("standard", "online_softmax")


@pytest.fixture(scope="module")
def reference(tiny_export):
    """Per config: export path, reference greedy tokens and logits (float64)."""
    out = {}
    for name, overrides in GQA.items():
        path = tiny_export(overrides)
        tokens, logits = ReferenceModel(open_export(path)).generate(PROMPT, NEW_TOKENS)
        out[name] = (path, tokens, logits)
    return out


def generate_cell(export, layout, algo, nranks, tmp_path, *extra):
    logits_file = tmp_path / f"{layout}_{algo}_{nranks}.npy"
    return generate(export, layout, algo, nranks, PROMPT, NEW_TOKENS, logits_file, *extra)


def assert_matches(reference, config, layout, nranks, tmp_path, algo, *extra):
    export, ref_tokens, ref_logits = reference[config]
    tokens, logits = generate_cell(export, layout, algo, nranks, tmp_path, *extra)
    assert logits.shape == ref_logits.shape
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=ATOL)
    assert tokens == ref_tokens


@pytest.mark.parametrize("nranks", [1, 2, 3, 4])
@pytest.mark.parametrize("config", sorted(GQA))
def test_layer_stages_match_reference(reference, config, nranks, tmp_path):
    algo = ALGOS[nranks % 2]  # both algorithms over the rank counts
    assert_matches(reference, config, "layer", nranks, tmp_path, algo, "--micro-batch", "4")


def test_layer_with_one_micro_batch_matches_reference(reference, tmp_path):
    assert_matches(reference, "kv4_ratio2", "layer", 2, tmp_path, "online_softmax", "--micro-batch", "64")


@pytest.mark.parametrize("nranks", [3, 5, 6, 8])
@pytest.mark.parametrize("config", ["kv8_ratio1", "kv4_ratio2", "kv2_ratio4"])
def test_headwise_at_any_rank_count_matches_reference(reference, config, nranks, tmp_path):
    assert_matches(reference, config, "headwise", nranks, tmp_path, ALGOS[nranks % 2])


def test_headwise_past_a_single_kv_head_matches_reference(reference, tmp_path):
    assert_matches(reference, "kv1_ratio4", "headwise", 3, tmp_path, "online_softmax")


@pytest.mark.parametrize("layout", ["layer2.headwise2", "sequence2.headwise2"])
@pytest.mark.parametrize("config", sorted(GQA))
def test_two_level_layouts_match_reference(reference, config, layout, tmp_path):
    algo = ALGOS[sorted(GQA).index(config) % 2]
    assert_matches(reference, config, layout, 4, tmp_path, algo, "--micro-batch", "4")


@pytest.mark.parametrize("layout, nranks", [("layer", 3), ("headwise", 6), ("layer2.headwise2", 4),
                                            ("sequence2.headwise2", 4)])
def test_new_layouts_match_hugging_face(tiny_checkpoint, tiny_export, layout, nranks, tmp_path):
    import torch

    overrides = GQA["kv2_ratio4"]
    tokens, logits = generate_cell(tiny_export(overrides), layout, "online_softmax", nranks, tmp_path,
                              "--micro-batch", "4")
    with torch.no_grad():
        seq = torch.tensor([PROMPT + tokens[:-1]])
        hf = tiny_checkpoint(overrides).model(seq).logits[0, len(PROMPT) - 1:].numpy()
    np.testing.assert_allclose(logits, hf, rtol=0, atol=ATOL)
    assert tokens == [int(t) for t in hf.argmax(-1)]


@pytest.mark.parametrize("layout, nranks, message", [
    ("layer2.headwise2", 3, "layer2.headwise2' needs 2 x 2 = 4 ranks, the job has 3"),
    ("pipeline", 2, "unknown parallel strategy 'pipeline'"),
    ("layer", 5, "layer: 5 stages exceed the 4 layers; use at most 4"),
    ("headwise", 9, "headwise: 9 ranks exceed the 8 query heads; use at most 8"),
    ("headwise2.layer2", 4, "two levels run layer/sequence across the groups and headwise inside"),
])
def test_bad_layouts_fail_before_any_work_with_one_line(reference, layout, nranks, message, tmp_path):
    export = reference["kv4_ratio2"][0]
    proc = run_mpi(nranks, ["-m", "pipeline", "generate", "--export", str(export),
                            "--parallel-strategy", layout, "--prompt-ids", "1,2,3", "--max-new-tokens", "2"])
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
