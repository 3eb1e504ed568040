"""The dtype table against what safetensors and torch say of the same dtypes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from model_export import dtypes
from model_export.config import CheckpointError


@pytest.mark.parametrize("row", dtypes.CHECKPOINT_DTYPES.values(), ids=lambda r: r.name)
def test_checkpoint_row_matches_safetensors_and_torch(row, tmp_path):
    """The header code safetensors writes for torch's dtype of that name, and its element size."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = torch.zeros(3, dtype=getattr(torch, row.torch_dtype))
    save_file({"t": t}, str(tmp_path / "t.safetensors"))
    raw = (tmp_path / "t.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8:8 + n])["t"]["dtype"] == row.safetensors
    assert row.itemsize == t.element_size() == row.storage.itemsize
    assert row.storage.byteorder in ("<", "=", "|") and row.storage.kind in "fu"


def test_bf16_is_held_as_uint16_bits():
    assert dtypes.BF16 == np.dtype(np.uint16) and dtypes.DTYPES["bfloat16"].storage == dtypes.BF16


def test_lookup_resolves_aliases_and_names_the_choices():
    assert dtypes.lookup("bf16").name == "bfloat16" and dtypes.lookup("fp32").name == "float32"
    assert dtypes.itemsize("bf16") == 2 and dtypes.itemsize("float32") == 4
    with pytest.raises(CheckpointError, match=r"unsupported export dtype 'float64' \(choose from"):
        dtypes.lookup("float64")  # a checkpoint may hold it; an export may not
    assert dtypes.lookup("float64", dtypes.CHECKPOINT_DTYPES).safetensors == "F64"
    assert dtypes.choices(dtypes.EXPORT_DTYPES) == ["bf16", "bfloat16", "float16", "float32", "fp16", "fp32",
                                                    "int8"]


def test_int8_row_is_quantized_with_float32_scales():
    row = dtypes.lookup("int8")
    assert row.quantized and row.storage == np.dtype(np.int8) and row.itemsize == 1
    assert dtypes.DTYPES[row.scale_dtype].storage == np.dtype("<f4") and row.norm_dtype == "float32"
    assert row.embed_dtype == "bfloat16" and not row.checkpoint  # no checkpoint is read as int8
    assert not any(r.quantized for r in dtypes.TABLE if r.name != "int8")

