"""Shared fixtures: tiny random Hugging Face Qwen3 checkpoints and their exports.

Building a checkpoint costs a torch model construction, so checkpoints and exports are cached
for the whole session by their arguments; tests must treat them as read-only.

    def test_x(tiny_export):
        export = open_export(tiny_export(TINY_GQA2))       # path of an exported HF checkpoint
    def test_y(tiny_checkpoint):
        ckpt = tiny_checkpoint(TINY_GQA2, dtype="bfloat16")  # .path, .model (float32 HF model)
    def test_z(synthetic_tiny_export):                      # path of the exported `tiny` preset
    def test_w(synthetic_tiny_export_bf16):                 # the same, exported as bfloat16
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from model_export.export import export_checkpoint
from model_export.synthetic import write_checkpoint


@dataclass(frozen=True)
class TinyCheckpoint:
    path: Path  # the saved checkpoint directory (config.json + safetensors)
    model: object  # the float32 transformers Qwen3ForCausalLM whose weights were saved (eval mode)


def _key(overrides: dict, **kw: object) -> str:
    return json.dumps([overrides, kw], sort_keys=True)


def build_hf_model(overrides: dict, seed: int = 0):
    """A float32 eager-attention Qwen3ForCausalLM with random weights, norms perturbed around 1.

    HF initialises norm weights to exactly 1, which would hide a norm applied wrongly; they
    are drawn from N(1, 0.1) instead.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(**overrides, attn_implementation="eager")
    model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.1)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Callable[..., TinyCheckpoint]:
    """Factory: tiny_checkpoint(overrides, dtype="float32", max_shard_size=None, seed=0).

    Saves a random HF Qwen3 model with `save_pretrained(safe_serialization=True)`; `dtype`
    "bfloat16"/"float16" casts the saved copy, `max_shard_size` (e.g. "40KB") shards it.
    """
    cache: dict[str, TinyCheckpoint] = {}

    def make(overrides: dict, dtype: str = "float32", max_shard_size: str | None = None,
             seed: int = 0) -> TinyCheckpoint:
        import torch

        key = _key(overrides, dtype=dtype, shard=max_shard_size, seed=seed)
        if key not in cache:
            model = build_hf_model(overrides, seed)
            path = tmp_path_factory.mktemp("hf_ckpt")
            saved = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
            kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
            saved.save_pretrained(path, safe_serialization=True, **kwargs)
            cache[key] = TinyCheckpoint(path, model)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory) -> Callable[..., Path]:
    """Factory: tiny_export(overrides, export_dtype="float32", **tiny_checkpoint kwargs) -> export path."""
    cache: dict[str, Path] = {}

    def make(overrides: dict, export_dtype: str = "float32", **kwargs: object) -> Path:
        key = _key(overrides, export_dtype=export_dtype, **kwargs)
        if key not in cache:
            ckpt = tiny_checkpoint(overrides, **kwargs)
            out = tmp_path_factory.mktemp("export") / "export"
            export_checkpoint(ckpt.path, out, dtype=export_dtype, progress=lambda msg: None)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def synthetic_tiny_checkpoint(tmp_path_factory) -> Path:
    """The `tiny` preset written by model_export.synthetic (bf16, seed 0)."""
    return write_checkpoint("tiny", tmp_path_factory.mktemp("synthetic") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def synthetic_tiny_export(synthetic_tiny_checkpoint) -> Path:
    """Our export of the `tiny` synthetic preset (float32); no torch needed."""
    out = synthetic_tiny_checkpoint.parent / "export"
    export_checkpoint(synthetic_tiny_checkpoint, out, progress=lambda msg: None)
    return out


@pytest.fixture(scope="session")
def synthetic_tiny_export_bf16(synthetic_tiny_checkpoint) -> Path:
    """Our bfloat16 export of the `tiny` synthetic preset: the same weights as synthetic_tiny_export."""
    out = synthetic_tiny_checkpoint.parent / "export_bf16"
    export_checkpoint(synthetic_tiny_checkpoint, out, dtype="bf16", progress=lambda msg: None)
    return out
