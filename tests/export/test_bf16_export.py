"""bfloat16 exports: bit-exact round trip, the loader's uint16 views, and the reference reading them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from model_export import layout
from model_export.__main__ import main as export_main
from model_export.dtypes import BF16, bf16_to_float32, float32_to_bf16
from model_export.reader import open_export, take_rows, to_float
from pipeline.engine.reference import ReferenceModel
from tests.tiny import TINY_GQA2, TINY_GQA4_TIED


def checkpoint_bf16_bits(path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint as bf16 bits, through safetensors' torch API (independent of our reader).

    bf16 tensors give their stored bits; float32 tensors are rounded by torch's own bf16 cast.
    """
    import torch

    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name).to(torch.bfloat16)
                out[name] = t.view(torch.int16).numpy().view(np.uint16)
    return out


@pytest.mark.parametrize("overrides, ckpt_dtype", [(TINY_GQA4_TIED, "bfloat16"), (TINY_GQA2, "float32")],
                         ids=["bf16_checkpoint_tied", "f32_checkpoint_untied"])
def test_bf16_round_trip_bit_for_bit(overrides, ckpt_dtype, tiny_checkpoint, tiny_export):
    """Matrices carry the checkpoint's bf16 bits (or torch's round-to-nearest-even of float32);
    norms are float32 holding the same values."""
    ckpt = tiny_checkpoint(overrides, dtype=ckpt_dtype)
    source = checkpoint_bf16_bits(ckpt.path)
    export = open_export(tiny_export(overrides, export_dtype="bf16", dtype=ckpt_dtype), verify=True)
    assert export.dtype_name == "bfloat16" and export.dtype == BF16
    for spec in layout.tensor_specs(export.cfg):
        bits = source[spec.hf_name].T if spec.transpose else source[spec.hf_name]
        got = export.tensor(spec.name)
        assert got.shape == spec.shape and not got.flags.writeable and got.flags.c_contiguous
        if len(spec.shape) == 1:  # norms stay float32
            assert export.tensor_dtype(spec.name) == "float32" and got.dtype == np.float32
            if ckpt_dtype == "bfloat16":  # exact widening of the stored bits
                assert np.array_equal(got, bf16_to_float32(bits)), spec.name
        else:
            assert export.tensor_dtype(spec.name) == "bfloat16" and got.dtype == BF16
            assert np.array_equal(got, np.ascontiguousarray(bits)), spec.name


def test_bf16_export_is_the_float32_export_rounded(synthetic_tiny_export, synthetic_tiny_export_bf16):
    """The synthetic checkpoint is bf16, so widening the bf16 export gives the float32 export exactly."""
    e32, e16 = open_export(synthetic_tiny_export), open_export(synthetic_tiny_export_bf16, verify=True)
    for name in e32.manifest["tensors"]:
        np.testing.assert_array_equal(to_float(e16.tensor(name)), e32.tensor(name), err_msg=name)
    # half the bytes (norms stay float32: a few hundred bytes more than exactly half)
    assert e16.weight_bytes() < 0.51 * e32.weight_bytes()
    assert sum(f["size"] for f in e16.manifest["files"].values()) < 0.52 * sum(
        f["size"] for f in e32.manifest["files"].values())
    manifest = json.loads((synthetic_tiny_export_bf16 / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16"
    for name, entry in manifest["tensors"].items():
        assert entry["offset"] % layout.ALIGN == 0, name
        assert entry["dtype"] == ("float32" if len(entry["shape"]) == 1 else "bfloat16"), name


def test_bf16_views_and_shards(synthetic_tiny_export, synthetic_tiny_export_bf16):
    e32, e16 = open_export(synthetic_tiny_export), open_export(synthetic_tiny_export_bf16)
    P, n_rep, I = e16.cfg.num_key_value_heads, e16.cfg.n_rep, e16.cfg.intermediate_size
    for r in range(P):  # one KV head per rank, with its query heads and I/P features
        blocks = range(r * n_rep, (r + 1) * n_rep), range(r, r + 1), range(r * I // P, (r + 1) * I // P)
        w16, w32 = e16.layer(1, *blocks), e32.layer(1, *blocks)
        assert w16.wq.dtype == w16.w_down_t.dtype == BF16 and w16.attn_norm.dtype == np.float32
        assert np.shares_memory(w16.wq, e16.tensor("layers.1.wq"))  # a view, no copy
        for field in ("wq", "wk", "wv", "wo_t", "w_gate", "w_up", "w_down_t", "q_norm", "mlp_norm"):
            np.testing.assert_array_equal(to_float(getattr(w16, field)), getattr(w32, field))
    assert e16.lm_head().dtype == BF16 and np.shares_memory(e16.lm_head(), e16.tensor("embed"))
    ids = np.array([5, 0, 5, e16.cfg.vocab_size - 1])
    out16, out32 = (np.full((4, e16.cfg.hidden_size), np.nan, np.float32) for _ in range(2))
    take_rows(e16.tensor("embed"), ids, out16)
    take_rows(e32.tensor("embed"), ids, out32)
    np.testing.assert_array_equal(out16, out32)
    np.testing.assert_array_equal(out32, e32.tensor("embed")[ids])


def test_reference_reads_bf16_export_exactly(synthetic_tiny_export, synthetic_tiny_export_bf16):
    """Same weights, same float64 arithmetic: the logits are identical, not merely close."""
    ref32 = ReferenceModel(open_export(synthetic_tiny_export))
    ref16 = ReferenceModel(open_export(synthetic_tiny_export_bf16))
    ids = np.random.default_rng(4).integers(0, ref32.cfg.vocab_size, 11).tolist()
    np.testing.assert_array_equal(ref16.forward(ids), ref32.forward(ids))
    tokens32, logits32 = ref32.generate(ids, 4)
    tokens16, logits16 = ref16.generate(ids, 4)
    assert tokens16 == tokens32
    np.testing.assert_array_equal(logits16, logits32)


def test_float32_to_bf16_rounds_like_torch():
    import torch

    rng = np.random.default_rng(0)
    scaled = rng.standard_normal(4096) * 10.0 ** rng.integers(-30, 30, 4096)
    special = [0.0, -0.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, np.inf, -np.inf, 3e38]  # ties both ways, overflow
    x = np.concatenate([scaled, special]).astype(np.float32)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bf16(x), theirs)
    assert np.isnan(bf16_to_float32(float32_to_bf16(np.array([np.nan], np.float32))))[0]


def test_bf16_to_float32_widens_every_pattern_like_torch():
    import torch

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    theirs = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16_to_float32(bits).view(np.uint32), theirs.view(np.uint32))
    out = np.empty((2, 3), np.float32)  # into a given buffer, from a strided view
    assert bf16_to_float32(bits[:12:2].reshape(2, 3), out=out) is out
    np.testing.assert_array_equal(out.ravel(), theirs[:12:2])


def test_cli_bf16_export_and_verify(synthetic_tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "e"
    args = ["--checkpoint", str(synthetic_tiny_checkpoint), "--out", str(out), "--dtype", "bf16"]
    assert export_main(args) == 0
    assert export_main(["--verify", str(out)]) == 0
    assert open_export(out).dtype_name == "bfloat16"
    # an unknown dtype is refused before any work (more bad dtypes: test_int8.py)
    assert export_main(["--checkpoint", str(synthetic_tiny_checkpoint), "--out", str(tmp_path / "x"),
                        "--dtype", "bf8"]) == 2
    assert not (tmp_path / "x").exists()
