"""int8 exports: the quantization against an independent float64 NumPy one, zero-copy shard views
of the int8 rows and their scales (uneven blocks too), checksums, bad input, and accuracy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from model_export import layout
from model_export.__main__ import main as export_main
from model_export.config import CheckpointError
from model_export.dtypes import BF16
from model_export.quant import dequantize
from model_export.reader import TENSOR_FIELDS, open_export, to_float
from tests.tiny import TINY_BASE, TINY_GQA1_TIED, TINY_GQA2, TINY_GQA4_TIED, file_mapped

# 8 KV heads (16 query heads), 100 features: on 3 ranks, blocks of 3/3/2 heads and 34/33/33 features
TINY_KV8 = dict(TINY_BASE, num_attention_heads=16, num_key_value_heads=8, head_dim=8,
                intermediate_size=100, vocab_size=250, tie_word_embeddings=True)
CONFIGS = {"f32_untied": (TINY_GQA2, "float32"), "bf16_tied": (TINY_GQA4_TIED, "bfloat16"),
           "square_wo_t": (TINY_GQA1_TIED, "float32")}  # qd == d: only the axis tells wo_t's scales


def source_float64(path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint, float64, via safetensors' torch API (not our reader)."""
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                out[name] = f.get_tensor(name).double().numpy()
    return out


def numpy_int8(w_hf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent symmetric per-output-channel quantization of w_hf (N, K): (q int8, scale float32)."""
    amax = np.abs(w_hf).max(axis=1)
    scale = np.float32(amax / 127.0)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.round(w_hf / scale.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
    return q, scale


@pytest.mark.parametrize("case", CONFIGS)
def test_int8_round_trip_against_numpy(case, tiny_checkpoint, tiny_export):
    overrides, ckpt_dtype = CONFIGS[case]
    source = source_float64(tiny_checkpoint(overrides, dtype=ckpt_dtype).path)
    export = open_export(tiny_export(overrides, export_dtype="int8", dtype=ckpt_dtype), verify=True)
    assert export.dtype_name == "int8" and export.dtype == np.int8
    quantized = set(export.manifest["quantization"]["tensors"])
    assert "lm_head" in quantized and "embed" not in quantized  # tied or not, the head is int8
    for spec in layout.tensor_specs(export.cfg, own_head=True):
        w_hf, got = source[spec.hf_name], export.tensor(spec.name)
        assert got.shape == spec.shape and not got.flags.writeable, spec.name
        if spec.name == "embed":  # bf16, rounded to nearest even by torch's cast
            import torch
            bits = torch.from_numpy(w_hf).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            assert got.dtype == BF16 and np.array_equal(got, bits) and export.scale("embed") is None
        elif len(spec.shape) == 1:
            assert got.dtype == np.float32 and np.array_equal(got, w_hf.astype(np.float32)), spec.name
        else:
            q, scale = numpy_int8(w_hf)
            assert spec.name in quantized and got.dtype == np.int8
            np.testing.assert_array_equal(got, q.T if spec.transpose else q, err_msg=spec.name)
            np.testing.assert_array_equal(export.scale(spec.name), scale, err_msg=spec.name)
            assert export.scale_axis(spec.name) == (1 if spec.transpose else 0)
            # round to nearest: every weight within half a step of its reconstruction, q in [-127, 127]
            recon = q.astype(np.float64) * scale.astype(np.float64)[:, None]
            assert np.all(np.abs(recon - w_hf) <= scale.astype(np.float64)[:, None] * (0.5 + 1e-6))
            assert q.min() >= -127 and np.all(np.abs(q).max(axis=1) == 127)  # each channel spans the range


def test_float_exports_have_no_scales(synthetic_tiny_export, synthetic_tiny_export_bf16):
    for path in (synthetic_tiny_export, synthetic_tiny_export_bf16):
        export = open_export(path)
        assert "quantization" not in export.manifest and "lm_head" not in export.manifest["tensors"]
        w = export.layer(0)
        assert all(getattr(w, f + "_scale") is None for f in TENSOR_FIELDS if not f.endswith("norm"))
        assert export.lm_head_scale() is None and export.scale("layers.0.wq") is None
        assert np.shares_memory(export.lm_head(), export.tensor("embed"))  # tied: the embedding


def blocks_of(n: int, parts: int) -> list[range]:
    """Uneven contiguous blocks, the larger first (what a caller such as the partition hands over)."""
    edges = np.cumsum([0] + [n // parts + (r < n % parts) for r in range(parts)])
    return [range(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def test_int8_shards_are_zero_copy_slices_of_the_full_matrix(tiny_export):
    export = open_export(tiny_export(TINY_KV8, export_dtype="int8"))
    cfg, P = export.cfg, 3
    kv, feats, vocab = (blocks_of(n, P) for n in (cfg.num_key_value_heads, cfg.intermediate_size,
                                                    cfg.vocab_size))
    assert [len(b) for b in kv] == [3, 3, 2] and [len(b) for b in feats] == [34, 33, 33]
    rows_per = {"q": cfg.head_dim, "kv": cfg.head_dim, "mlp": 1}  # rows per unit of a block
    for r in range(P):
        q_heads = range(kv[r].start * cfg.n_rep, kv[r].stop * cfg.n_rep)
        w = export.layer(1, q_heads, kv[r], feats[r])
        for field in TENSOR_FIELDS:
            name = f"layers.1.{field}"
            full_q = export.tensor(name)
            got, scale = getattr(w, field), getattr(w, field + "_scale", None)
            if full_q.ndim == 1:  # norms: whole, no scale
                assert scale is None and np.array_equal(got, full_q)
                continue
            spec = next(s for s in layout.tensor_specs(cfg) if s.name == name)
            first = {"q": q_heads, "kv": kv[r], "mlp": feats[r]}[spec.shard].start * rows_per[spec.shard]
            rows = slice(first, first + got.shape[0])
            full_scale = export.scale(name)
            assert np.shares_memory(got, full_q) and np.shares_memory(scale, full_scale), field
            assert file_mapped(scale) and not scale.flags.writeable, field
            # the full matrix dequantized here in float64, then sliced
            s64 = full_scale.astype(np.float64)
            full = full_q.astype(np.float64) * (s64[None, :] if spec.transpose else s64[:, None])
            np.testing.assert_array_equal(got.astype(np.float64) * (
                scale.astype(np.float64)[None, :] if spec.transpose else scale.astype(np.float64)[:, None]),
                full[rows], err_msg=f"{field} rank {r}")
            if spec.transpose:  # scales over N: every rank holds all of them
                assert scale.shape == (cfg.hidden_size,)
            else:
                assert scale.shape == (got.shape[0],)
    head, head_scale = export.lm_head(), export.lm_head_scale()
    assert not np.shares_memory(head, export.tensor("embed"))  # an int8 copy of the tied table
    for b in vocab:
        part, part_scale = head[b.start:b.stop], head_scale[b.start:b.stop]
        assert np.shares_memory(part, head) and np.shares_memory(part_scale, head_scale)
        np.testing.assert_array_equal(dequantize(part, part_scale, 0, np.float64),
                                      dequantize(head, head_scale, 0, np.float64)[b.start:b.stop])


def test_to_float_refuses_int8_without_scales(synthetic_tiny_checkpoint, tmp_path):
    with pytest.raises(TypeError, match="need their scales"):
        to_float(np.zeros((2, 2), np.int8))
    with pytest.raises(ValueError, match="does not run along axis 1"):
        dequantize(np.zeros((2, 3), np.int8), np.ones(2, np.float32), 1)


@pytest.fixture(scope="module")
def int8_export(synthetic_tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "export"
    assert export_main(["--checkpoint", str(synthetic_tiny_checkpoint), "--out", str(out),
                        "--dtype", "int8"]) == 0
    return out


def corrupted_copy(export_path, tmp_path, name: str, where: str):
    """A copy of the export with one byte flipped in the data of `name`'s int8 matrix or its scales."""
    copy = tmp_path / "copy"
    shutil.copytree(export_path, copy)
    entry = json.loads((copy / "manifest.json").read_text())["tensors"][name]
    offset = entry["offset"] if where == "int8" else entry["scale"]["offset"] + 1
    with open(copy / entry["file"], "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))
    return copy, entry["file"]


@pytest.mark.parametrize("name", ["layers.1.wo_t", "lm_head"])
@pytest.mark.parametrize("where", ["int8", "scale"])
def test_flipped_byte_fails_the_checksum(int8_export, tmp_path, capsys, name, where):
    copy, fname = corrupted_copy(int8_export, tmp_path, name, where)
    open_export(copy)  # same size: only the checksum can tell
    with pytest.raises(CheckpointError, match=rf"{fname}: sha256 mismatch"):
        open_export(copy, verify=True)
    assert export_main(["--verify", str(copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert "sha256 mismatch" in err and len(err.splitlines()) == 1


def test_truncated_int8_file_is_refused_on_open(int8_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(int8_export, copy)
    fname = json.loads((copy / "manifest.json").read_text())["tensors"]["layers.0.w_down_t"]["file"]
    size = (copy / fname).stat().st_size
    with open(copy / fname, "r+b") as f:
        f.truncate(size - 4)  # the last bytes are w_down_t's scales
    with pytest.raises(CheckpointError, match=rf"{fname}: size {size - 4} bytes, manifest says {size}"):
        open_export(copy)


def test_manifest_without_scales_is_refused(int8_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(int8_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["quantization"]["granularity"] == "per_output_channel"
    assert "round_half_even" in manifest["quantization"]["rule"]
    manifest["tensors"]["layers.0.wk"].pop("scale")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="'layers.0.wk' is int8 without its scales"):
        open_export(copy)
    manifest["tensors"]["layers.0.wk"]["scale"] = dict(manifest["tensors"]["layers.0.wv"]["scale"], axis=1)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="'layers.0.wk': scales float32 .* along axis 1, expected"):
        open_export(copy)


@pytest.mark.parametrize("dtype", ["int4", "float64"])
def test_a_dtype_no_export_holds_is_one_line(synthetic_tiny_checkpoint, tmp_path, capsys, dtype):
    out = tmp_path / "x"
    assert export_main(["--checkpoint", str(synthetic_tiny_checkpoint), "--out", str(out),
                        "--dtype", dtype]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dtype" in err and f"'{dtype}'" in err and "int8" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_export_asked_for_a_dtype_it_does_not_hold(int8_export, capsys):
    assert export_main(["--verify", str(int8_export), "--dtype", "int8"]) == 0
    capsys.readouterr()
    assert export_main(["--verify", str(int8_export), "--dtype", "bf16"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds int8 weights, not bfloat16" in err
    with pytest.raises(CheckpointError, match="unsupported export dtype 'int3'"):
        open_export(int8_export, dtype="int3")


def test_int8_export_through_the_pipeline_command(synthetic_tiny_checkpoint, int8_export, tmp_path):
    from pipeline.__main__ import main as pipeline_main

    out = tmp_path / "e"
    assert pipeline_main(["export", "--checkpoint", str(synthetic_tiny_checkpoint), "--out", str(out),
                          "--dtype", "int8"]) == 0
    assert open_export(out, verify=True).manifest["files"] == open_export(int8_export).manifest["files"]


def test_int8_is_about_a_quarter_of_float32(int8_export, synthetic_tiny_export):
    """Matrices at 1 byte (+ 4 per output channel), the embedding at 2 and the tied head's int8
    copy at 1: 0.39 of the float32 bytes for the tiny preset (0.38 for Qwen3-0.6B)."""
    e8, e32 = open_export(int8_export), open_export(synthetic_tiny_export)
    assert e8.weight_bytes() < 0.45 * e32.weight_bytes()


def test_int8_logits_close_to_float32(synthetic_tiny_export, int8_export):
    """The float64 reference on the dequantized int8 export against it on the float32 export:
    a wrong scale axis or a lost sign would make the NMSE O(1)."""
    from tests.export.int8_accuracy import exported_int8_measures

    m = exported_int8_measures(open_export(synthetic_tiny_export), open_export(int8_export), tokens=48)
    assert m["logits_nmse"] < 1e-3 and m["kl"] < 1e-4 and m["top1"] >= 0.95
