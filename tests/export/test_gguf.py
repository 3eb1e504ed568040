"""GGUF files written from a checkpoint (model_export.gguf), read back with gguf's own reader.

The expected values are computed here from the safetensors bits, independently of the writer:
bf16 widened by a shift, float32 rounded to bf16 (nearest even) by integer arithmetic, and Q8_0
quantized by a NumPy transcription of ggml's reference (one float16 scale amax/127 per 32 values,
int8 values rounded half away from zero).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_export.checkpoint import open_checkpoint
from model_export.config import PRESETS, CheckpointError
from model_export.synthetic import write_checkpoint

gguf = pytest.importorskip("gguf", reason="the gguf package (extra `baselines`) is not installed")
from model_export import gguf as gguf_export  # noqa: E402  (after the skip: it needs gguf)

ARCH_NAMES = {  # a few rows of llama.cpp's Qwen3 names, written out (gguf's table is what the writer uses)
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "model.layers.1.self_attn.q_proj.weight": "blk.1.attn_q.weight",
    "model.layers.1.self_attn.k_norm.weight": "blk.1.attn_k_norm.weight",
    "model.layers.0.self_attn.o_proj.weight": "blk.0.attn_output.weight",
    "model.layers.0.post_attention_layernorm.weight": "blk.0.ffn_norm.weight",
    "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight",
}


def checkpoint_float32(ckpt, name: str) -> np.ndarray:
    """The checkpoint tensor's exact values as float32 (bf16 bits shifted into the high half)."""
    raw = np.asarray(ckpt.array(name))
    if ckpt.tensors[name].dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even (no NaNs in these weights)."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def q8_0_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float16 scales, int8 values, |x/d| distance from a .5 tie) of ggml's Q8_0, per 32 values."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    scaled = np.divide(blocks, d, out=np.zeros_like(blocks), where=d > 0).astype(np.float64)
    q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # half away from zero, as C's roundf
    tie = np.abs(np.abs(scaled) - np.floor(np.abs(scaled)) - 0.5)
    return d.astype(np.float16).reshape(-1), q.astype(np.int8), tie


def read(path: Path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in r.tensors}


@pytest.fixture(scope="module")
def float32_checkpoint(tmp_path_factory) -> Path:
    """The tiny preset as a float32 checkpoint: its values are not all bf16, so rounding shows."""
    return write_checkpoint("tiny", tmp_path_factory.mktemp("gguf") / "ckpt32", seed=3, dtype="float32")


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0"])
@pytest.mark.parametrize("source", ["bf16", "float32"])
def test_tensors_read_back_equal_the_checkpoint(dtype, source, synthetic_tiny_checkpoint, float32_checkpoint,
                                                tmp_path):
    path = synthetic_tiny_checkpoint if source == "bf16" else float32_checkpoint
    out = tmp_path / f"m-{dtype}.gguf"
    done = gguf_export.write_gguf(path, out, dtype)
    ckpt = open_checkpoint(path)
    fields, tensors = read(out)
    assert done["tensors"] == len(tensors) == len(ckpt.tensors)  # tied: no output.weight in either
    assert "output.weight" not in tensors
    for hf, name in ARCH_NAMES.items():
        assert name in tensors, hf
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, ckpt.cfg.num_hidden_layers)
    for hf in ckpt.tensors:
        t = tensors[names.get_name(hf, try_suffixes=(".weight",))]
        want = checkpoint_float32(ckpt, hf)
        assert list(t.shape) == list(want.shape[::-1])  # GGML's ne order: columns first
        if want.ndim == 1 or dtype == "f32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want)
        elif dtype == "bf16":
            assert t.tensor_type == gguf.GGMLQuantizationType.BF16
            got = np.asarray(t.data).view(np.uint16).reshape(want.shape)
            np.testing.assert_array_equal(got, round_bf16(want))
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            raw = np.asarray(t.data).reshape(-1, 34)  # per block: float16 scale, 32 int8
            scales, q, tie = q8_0_reference(want)
            np.testing.assert_array_equal(raw[:, :2].copy().view(np.float16).reshape(-1), scales)
            got_q = raw[:, 2:].copy().view(np.int8)
            assert np.abs(got_q.astype(int) - q).max() <= 1  # x*(1/d) against x/d: ties only
            away = tie > 1e-3
            np.testing.assert_array_equal(got_q[away], q[away])
    assert fields["general.architecture"] == "qwen3"
    c = PRESETS["tiny"]
    assert fields["qwen3.block_count"] == c["num_hidden_layers"]
    assert fields["qwen3.attention.head_count_kv"] == c["num_key_value_heads"]
    assert fields["qwen3.attention.key_length"] == c["head_dim"]
    assert fields["qwen3.rope.freq_base"] == pytest.approx(c["rope_theta"])
    assert fields["qwen3.attention.layer_norm_rms_epsilon"] == pytest.approx(c["rms_norm_eps"])
    assert fields["tokenizer.ggml.model"] == "none" and fields["qwen3.vocab_size"] == c["vocab_size"]
    assert fields["general.file_type"] == {"f32": 0, "bf16": 32, "q8_0": 7}[dtype]


def test_a_tokenizer_json_becomes_the_bpe_vocabulary(synthetic_tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in synthetic_tiny_checkpoint.iterdir():
        (ckpt / f.name).symlink_to(f)
    vocab = {"a": 0, "b": 1, "ab": 2, "Ġa": 3}
    (ckpt / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": vocab, "merges": ["a b", ["Ġ", "a"]]},
        "added_tokens": [{"id": 500, "content": "<|endoftext|>", "special": True},
                         {"id": 501, "content": "<think>", "special": False}]}))
    out = tmp_path / "v.gguf"
    assert gguf_export.write_gguf(ckpt, out, "f32")["vocab"] == "gpt2"
    fields, _ = read(out)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == PRESETS["tiny"]["vocab_size"]
    assert tokens[:4] == ["a", "b", "ab", "Ġa"] and tokens[4] == "[PAD4]"
    assert (tokens[500], types[500], tokens[501], types[501]) == ("<|endoftext|>", 3, "<think>", 4)
    assert types[:4] == [1] * 4 and types[4] == 5
    assert fields["tokenizer.ggml.merges"] == ["a b", "Ġ a"]
    assert fields["tokenizer.ggml.pre"] == "qwen2"


def test_bad_input_fails_before_writing(synthetic_tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "x.gguf"
    with pytest.raises(CheckpointError, match="unknown GGUF dtype"):
        gguf_export.write_gguf(synthetic_tiny_checkpoint, out, "q4_0")
    with pytest.raises(CheckpointError, match="not found"):
        gguf_export.write_gguf(tmp_path / "missing", out, "f32")
    assert gguf_export.main(["--checkpoint", str(tmp_path / "missing"), "--dtype", "f32",
                             "--out", str(out)]) == 1

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(gguf_export, "encoded", broken)  # dies after the header was written
    with pytest.raises(OSError):
        gguf_export.write_gguf(synthetic_tiny_checkpoint, out, "f32")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary is left


def test_without_the_gguf_package_the_error_says_what_to_install(monkeypatch, synthetic_tiny_checkpoint,
                                                                 tmp_path):
    import builtins

    real = builtins.__import__

    def no_gguf(name, *args, **kwargs):
        if name == "gguf":
            raise ImportError("No module named 'gguf'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gguf)
    with pytest.raises(CheckpointError, match=r"pip install -e '\.\[baselines\]'"):
        gguf_export.write_gguf(synthetic_tiny_checkpoint, tmp_path / "x.gguf", "f32")
