"""Export round trip, manifest, loader views and shards, and the synthetic checkpoint writer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from model_export import layout
from model_export.config import CheckpointError
from model_export.export import export_checkpoint, sha256_file
from model_export.reader import open_export
from model_export.synthetic import (
    hf_config,
    preset_config,
    safetensors_header,
    tensor_table,
    write_checkpoint,
)
from tests.tiny import QWEN3_06B_PARAMS, TINY_GQA1_TIED, TINY_GQA2, TINY_GQA4_TIED, file_mapped


def checkpoint_tensors_float32(path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint directory via safetensors' torch API (independent of our reader)."""
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                out[name] = f.get_tensor(name).float().numpy()
    return out


@pytest.mark.parametrize("overrides, kwargs", [
    (TINY_GQA2, {}),
    (TINY_GQA4_TIED, {"dtype": "bfloat16"}),
    (TINY_GQA1_TIED, {"dtype": "float16"}),
    (TINY_GQA2, {"max_shard_size": "60KB"}),
], ids=["f32_untied", "bf16_tied", "f16_tied", "sharded"])
def test_round_trip_bit_for_bit(overrides, kwargs, tiny_checkpoint, tiny_export):
    ckpt = tiny_checkpoint(overrides, **kwargs)
    if "max_shard_size" in kwargs:
        assert (ckpt.path / "model.safetensors.index.json").is_file()
        assert len(list(ckpt.path.glob("*.safetensors"))) > 1
    source = checkpoint_tensors_float32(ckpt.path)
    export = open_export(tiny_export(overrides, **kwargs), verify=True)
    for spec in layout.tensor_specs(export.cfg):
        expected = source[spec.hf_name].T if spec.transpose else source[spec.hf_name]
        got = export.tensor(spec.name)
        assert got.dtype == np.float32 and got.shape == spec.shape
        assert np.array_equal(got.view(np.uint32), np.ascontiguousarray(expected).view(np.uint32)), spec.name


def test_manifest(tiny_checkpoint, tiny_export):
    path = tiny_export(TINY_GQA2)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == layout.FORMAT and manifest["version"] == layout.VERSION
    assert manifest["config"]["model_type"] == "qwen3" and manifest["dtype"] == "float32"
    assert manifest["tokenizer"] is None
    source = manifest["source"]
    ckpt = tiny_checkpoint(TINY_GQA2).path
    assert source["checkpoint"] == str(ckpt) and source["synthetic"] is False
    assert source["files"] == {"model.safetensors": sha256_file(ckpt / "model.safetensors")}
    specs = layout.tensor_specs(open_export(path).cfg)
    assert list(manifest["tensors"]) == [s.name for s in specs]
    assert "lm_head" in manifest["tensors"]  # untied
    for name, entry in manifest["tensors"].items():
        assert entry["offset"] % layout.ALIGN == 0, name
    for fname, info in manifest["files"].items():
        assert (path / fname).stat().st_size == info["size"]
        assert sha256_file(path / fname) == info["sha256"]
    assert not list(path.parent.glob(".*partial*"))


def test_synthetic_export_manifest(synthetic_tiny_export):
    source = json.loads((synthetic_tiny_export / "manifest.json").read_text())["source"]
    assert source["synthetic"] is True
    assert source["synthetic_params"] == {"preset": "tiny", "seed": 0}
    assert "lm_head" not in open_export(synthetic_tiny_export).manifest["tensors"]  # tied


def test_views_are_read_only_memmaps(synthetic_tiny_export):
    export = open_export(synthetic_tiny_export)
    wq = export.tensor("layers.0.wq")
    assert file_mapped(wq) and not wq.flags.writeable and wq.flags.c_contiguous
    assert export.lm_head() is not None and np.shares_memory(export.lm_head(), export.tensor("embed"))
    with pytest.raises(KeyError, match="no tensor 'layers.9.wq'"):
        export.tensor("layers.9.wq")


@pytest.mark.parametrize("nranks", [1, 2, 4])
def test_shards_reassemble(nranks, tiny_export):
    export = open_export(tiny_export(TINY_GQA1_TIED))  # 4 KV heads: P = 1, 2, 4 all divide
    cfg = export.cfg
    counts = {"q": cfg.num_attention_heads, "kv": cfg.num_key_value_heads, "mlp": cfg.intermediate_size}

    def equal_block(kind, r):  # rank r's equal share of the heads or features the rows are grouped by
        n = counts[kind] // nranks
        return range(r * n, (r + 1) * n)

    for spec in layout.tensor_specs(cfg):
        full = export.tensor(spec.name)
        parts = [export.shard(spec.name, equal_block(spec.shard, r) if spec.shard else None)
                 for r in range(nranks)]
        for part in parts:
            assert np.shares_memory(part, full) and part.flags.c_contiguous and not part.flags.writeable
        if spec.shard is None:
            assert all(p.shape == full.shape for p in parts)
        else:
            assert np.array_equal(np.concatenate(parts), full), spec.name
    heads_r, last = cfg.num_attention_heads // nranks, nranks - 1
    w = export.layer(1, equal_block("q", last), equal_block("kv", last), equal_block("mlp", last))
    assert w.wq.shape == w.wo_t.shape == (heads_r * cfg.head_dim, cfg.hidden_size)
    assert w.wk.shape == (cfg.num_key_value_heads // nranks * cfg.head_dim, cfg.hidden_size)
    assert w.w_gate.shape == w.w_down_t.shape == (cfg.intermediate_size // nranks, cfg.hidden_size)
    # the last rank's query heads are the last heads_r heads, in order
    np.testing.assert_array_equal(w.wq, export.tensor("layers.1.wq")[-heads_r * cfg.head_dim:])


def test_shard_blocks_are_rows_of_heads_and_features(synthetic_tiny_export):
    """A block counts heads for q/k/v/o (head_dim rows each) and features for the MLP; one outside
    the tensor is an error naming it. (Which P can run is pipeline.engine.partition's: tests/engine.)"""
    export = open_export(synthetic_tiny_export)
    cfg = export.cfg
    D, H = cfg.head_dim, cfg.num_attention_heads
    np.testing.assert_array_equal(export.shard("layers.0.wk", range(1, 2)),
                                  export.tensor("layers.0.wk")[D: 2 * D])
    np.testing.assert_array_equal(export.shard("layers.0.w_up", range(3, 5)),
                                  export.tensor("layers.0.w_up")[3:5])
    assert export.shard("layers.0.attn_norm", range(0, 1)).shape == (cfg.hidden_size,)
    with pytest.raises(ValueError, match=rf"'layers.0.wq': block range\(0, {H + 1}\) .* its {H} heads"):
        export.shard("layers.0.wq", range(H + 1))
    with pytest.raises(ValueError, match="'layers.0.w_gate'"):
        export.shard("layers.0.w_gate", range(0, 4, 2))


def test_tokenizer_is_copied(synthetic_tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(synthetic_tiny_checkpoint, ckpt)
    (ckpt / "tokenizer.json").write_text('{"model": {}}')
    (ckpt / "tokenizer_config.json").write_text("{}")
    export_checkpoint(ckpt, tmp_path / "export", progress=lambda msg: None)
    export = open_export(tmp_path / "export")
    assert export.manifest["tokenizer"] == "tokenizer.json"
    assert export.tokenizer_path.read_text() == '{"model": {}}'
    assert (tmp_path / "export" / "tokenizer_config.json").read_text() == "{}"


def test_export_force_replaces(synthetic_tiny_checkpoint, tmp_path):
    out = tmp_path / "export"
    export_checkpoint(synthetic_tiny_checkpoint, out, progress=lambda msg: None)
    with pytest.raises(CheckpointError, match="already holds an export"):
        export_checkpoint(synthetic_tiny_checkpoint, out, progress=lambda msg: None)
    (out / "stale").write_text("x")
    export_checkpoint(synthetic_tiny_checkpoint, out, force=True, progress=lambda msg: None)
    assert not (out / "stale").exists() and open_export(out, verify=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp or old dirs left


def test_float16_export(synthetic_tiny_checkpoint, synthetic_tiny_export, tmp_path):
    export_checkpoint(synthetic_tiny_checkpoint, tmp_path / "e16", dtype="float16", progress=lambda m: None)
    e16, e32 = open_export(tmp_path / "e16", verify=True), open_export(synthetic_tiny_export)
    w = e16.tensor("layers.1.w_down_t")
    assert w.dtype == np.float16
    np.testing.assert_array_equal(w, e32.tensor("layers.1.w_down_t").astype(np.float16))


# --- synthetic checkpoints ---------------------------------------------------------------------

def test_synthetic_06b_matches_hf_tensor_list():
    """Names, shapes and count of the 0.6B preset against HF's model on the meta device (no data)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = preset_config("qwen3-0.6b")
    table = tensor_table(cfg)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config.from_dict(hf_config(cfg)))
    hf = {n: tuple(t.shape) for n, t in model.state_dict().items() if n != "lm_head.weight"}  # tied
    assert {n: shape for n, (shape, _) in table.items()} == hf
    assert all(dtype == "BF16" for _, dtype in table.values())
    n_params = sum(int(np.prod(shape)) for shape, _ in table.values())
    assert n_params == model.num_parameters() == QWEN3_06B_PARAMS
    header = safetensors_header(table)
    assert int.from_bytes(header[:8], "little") == len(header) - 8 and len(header) % 8 == 0
    last = json.loads(header[8:])["model.norm.weight"]["data_offsets"][1]
    assert last == 2 * QWEN3_06B_PARAMS  # bf16: the data section is exactly the parameters


def test_synthetic_config_is_what_transformers_writes(tmp_path):
    from transformers import Qwen3Config

    ours = hf_config(preset_config("qwen3-0.6b"))
    Qwen3Config.from_dict(ours).save_pretrained(tmp_path)
    theirs = json.loads((tmp_path / "config.json").read_text())
    assert theirs == ours and ours["architectures"] == ["Qwen3ForCausalLM"]


def test_synthetic_checkpoint_is_deterministic_and_hf_shaped(synthetic_tiny_checkpoint, tmp_path):
    again = write_checkpoint("tiny", tmp_path / "again", seed=0)
    other = write_checkpoint("tiny", tmp_path / "other", seed=1)
    st = "model.safetensors"
    assert sha256_file(again / st) == sha256_file(synthetic_tiny_checkpoint / st)
    assert sha256_file(other / st) != sha256_file(synthetic_tiny_checkpoint / st)
    assert json.loads((again / "synthetic.json").read_text()) == {"preset": "tiny", "seed": 0}
    tensors = checkpoint_tensors_float32(again)
    table = tensor_table(preset_config("tiny"))
    assert {n: t.shape for n, t in tensors.items()} == {n: shape for n, (shape, _) in table.items()}
    assert abs(tensors["model.embed_tokens.weight"].std() - 0.02) < 0.002
    for name, t in tensors.items():
        if name.endswith("norm.weight"):
            assert abs(t.mean() - 1) < 0.01 and t.std() < 0.03, name
    assert not list(tmp_path.glob(".*partial*"))


def test_synthetic_refuses_non_empty_out(synthetic_tiny_checkpoint):
    with pytest.raises(CheckpointError, match="not empty"):
        write_checkpoint("tiny", synthetic_tiny_checkpoint)
