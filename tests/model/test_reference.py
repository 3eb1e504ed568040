"""The NumPy reference model against Hugging Face's Qwen3ForCausalLM, and against itself."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.reader import open_export
from pipeline.engine.reference import ReferenceModel, apply_rope, causal_attention, rms_norm, rope_cos_sin
from tests.tiny import TINY_CONFIGS

# HF computes in float32, the reference in float64: the gap is float32 rounding through a
# few layers of O(1) activations, far below 1e-4.
HF_ATOL = 1e-4
# Cached decode and full recomputation do the same float64 arithmetic in different groupings.
CACHE_ATOL = 1e-10
GREEDY_STEPS = 16


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()  # (T, V)


def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by full recomputation each step: nothing of HF's cache machinery involved."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(hf_logits(model, ids)[-1])))
    return ids[len(prompt):]


def prompt(n: int, vocab: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_logits_match_hf(name, tiny_checkpoint, tiny_export):
    overrides = TINY_CONFIGS[name]
    model = tiny_checkpoint(overrides).model
    ref = ReferenceModel(open_export(tiny_export(overrides)))
    ids = prompt(13, overrides["vocab_size"])
    ours, theirs = ref.forward(ids), hf_logits(model, ids)
    np.testing.assert_allclose(ours[-1], theirs[-1], rtol=0, atol=HF_ATOL)  # last position
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=HF_ATOL)  # every position


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_greedy_matches_hf(name, tiny_checkpoint, tiny_export):
    overrides = TINY_CONFIGS[name]
    model = tiny_checkpoint(overrides).model
    ref = ReferenceModel(open_export(tiny_export(overrides)))
    ids = prompt(7, overrides["vocab_size"], seed=2)
    tokens, logits = ref.generate(ids, GREEDY_STEPS)
    assert tokens == hf_greedy(model, ids, GREEDY_STEPS)
    np.testing.assert_allclose(logits[-1], hf_logits(model, ids + tokens[:-1])[-1], rtol=0, atol=HF_ATOL)


def test_reference_matches_hf_on_bf16_synthetic_checkpoint(synthetic_tiny_checkpoint, synthetic_tiny_export):
    """Our own synthetic writer + exporter against HF reading the same bf16 file."""
    import torch
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(synthetic_tiny_checkpoint, dtype=torch.float32,
                                             attn_implementation="eager").eval()
    ref = ReferenceModel(open_export(synthetic_tiny_export))
    ids = prompt(9, ref.cfg.vocab_size)
    np.testing.assert_allclose(ref.forward(ids), hf_logits(model, ids), rtol=0, atol=HF_ATOL)


def test_kv_cache_decode_equals_full_recomputation(synthetic_tiny_export):
    ref = ReferenceModel(open_export(synthetic_tiny_export))
    ids = prompt(12, ref.cfg.vocab_size, seed=3)
    full = ref.forward(ids)  # (T, V), no cache
    cache = ref.new_cache(len(ids))
    pieces = [ref.forward(ids[:5], cache), ref.forward(ids[5:8], cache)]  # prefill, then a chunk
    pieces += [ref.forward([t], cache) for t in ids[8:]]  # single-token decode steps
    assert cache.length == len(ids)
    np.testing.assert_allclose(np.concatenate(pieces), full, rtol=0, atol=CACHE_ATOL)


def test_generate_contract(synthetic_tiny_export):
    ref = ReferenceModel(open_export(synthetic_tiny_export))
    ids = prompt(6, ref.cfg.vocab_size, seed=4)
    tokens, logits = ref.generate(ids, 5)
    assert logits.shape == (5, ref.cfg.vocab_size)
    assert tokens == [int(np.argmax(row)) for row in logits]
    np.testing.assert_allclose(logits[0], ref.forward(ids)[-1], rtol=0, atol=CACHE_ATOL)
    np.testing.assert_allclose(logits[4], ref.forward(ids + tokens[:4])[-1], rtol=0, atol=CACHE_ATOL)


def test_float32_reference_close_to_float64(synthetic_tiny_export):
    export = open_export(synthetic_tiny_export)
    ids = prompt(10, export.cfg.vocab_size)
    f32 = ReferenceModel(export, np.float32).forward(ids)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, ReferenceModel(export).forward(ids), rtol=0, atol=HF_ATOL)


def test_float32_stays_float32():
    """A float64 scalar slipping in would turn float32 mode into slow mixed-dtype matmuls."""
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((3, 4, 8), np.float32), rng.standard_normal((5, 2, 8), np.float32)
    cos, sin = (a.astype(np.float32) for a in rope_cos_sin(np.arange(3), 8, 1e4))
    assert causal_attention(q, k, k, 2).dtype == np.float32
    assert apply_rope(q, cos, sin).dtype == np.float32
    assert rms_norm(q, np.ones(8, np.float32), 1e-6).dtype == np.float32


def test_cache_overflow_is_an_error(synthetic_tiny_export):
    ref = ReferenceModel(open_export(synthetic_tiny_export))
    with pytest.raises(ValueError, match="cache holds 4 positions"):
        ref.forward([1, 2, 3, 4, 5], ref.new_cache(4))
