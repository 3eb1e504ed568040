"""Read a Hugging Face Qwen3 checkpoint directory (single-file or sharded safetensors).

The safetensors library validates each file (header, offsets, that the data covers the file);
the tensor data itself is then memory-mapped with NumPy, one tensor at a time, because
safetensors' NumPy API cannot represent bf16 and would copy every tensor anyway.
bf16 is widened to float32 exactly: its 16 bits are the high half of a float32. A bf16 export of a
bf16 checkpoint copies the 16-bit patterns unchanged; other source dtypes are rounded to bf16 from
float32 (round to nearest even, as torch's `.to(torch.bfloat16)`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from model_export import layout
from model_export.config import CheckpointError, Qwen3Config
from model_export.dtypes import EXPORT_DTYPES, SAFETENSORS, bf16_to_float32, float32_to_bf16

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    dtype: str  # safetensors code: "BF16", "F16", "F32", "F64"
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`


@dataclass
class Checkpoint:
    path: Path
    cfg: Qwen3Config
    files: list[Path]  # the weight files
    tensors: dict[str, StoredTensor]  # by Hugging Face name
    synthetic: dict | None  # contents of synthetic.json, if the generator wrote this checkpoint

    def array(self, name: str) -> np.memmap:
        """The tensor as stored (bf16 as uint16 bits), memory-mapped read-only."""
        t = self.tensors[name]
        if 0 in t.shape:
            return np.zeros(t.shape, SAFETENSORS[t.dtype].storage)  # np.memmap cannot map zero bytes
        return np.memmap(t.file, dtype=SAFETENSORS[t.dtype].storage, mode="r", offset=t.offset,
                         shape=t.shape)

    def blocks(self, name: str, transpose: bool, dtype: str = "float32",
               max_bytes: int = 1 << 24) -> Iterator[np.ndarray]:
        """The tensor (transposed if asked) encoded as `dtype`, as C-contiguous row blocks.

        `dtype` is "float32", "float16" or "bfloat16" (yielded as uint16 bit patterns).
        Blocks of at most ~`max_bytes` keep the peak memory at one block plus the mapped source.
        """
        t = self.tensors[name]
        src = self.array(name)
        if src.ndim < 2:
            yield np.ascontiguousarray(encode(src[...], t.dtype, dtype))
            return
        rows, row_len = (src.shape[1], src.shape[0]) if transpose else src.shape
        step = max(1, max_bytes // max(1, row_len * 4))
        for r in range(0, rows, step):
            block = src[:, r:r + step].T if transpose else src[r:r + step]
            yield np.ascontiguousarray(encode(block, t.dtype, dtype))


def to_float32(a: np.ndarray, code: str) -> np.ndarray:
    """Exact conversion of stored values (safetensors dtype `code`) to float32."""
    if code == "BF16":
        return bf16_to_float32(a)
    return a.astype(np.float32)


def encode(a: np.ndarray, code: str, dtype: str) -> np.ndarray:
    """Stored values `a` (safetensors dtype `code`) as export `dtype` ("float32", "float16", "bfloat16").

    bf16 -> bf16 keeps the bit patterns; anything else goes through float32 (exact for bf16/f16/f32
    sources; a float64 source is rounded twice, to float32 then to bf16).
    """
    if dtype not in EXPORT_DTYPES or EXPORT_DTYPES[dtype].quantized:  # int8 needs scales: quant.py
        raise CheckpointError(f"cannot encode as {dtype!r}: not a float export dtype")
    if dtype == "bfloat16":
        return a.astype(np.uint16) if code == "BF16" else float32_to_bf16(to_float32(a, code))
    return to_float32(a, code).astype(EXPORT_DTYPES[dtype].storage, copy=False)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open and validate a checkpoint directory; raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    cfg = Qwen3Config.from_json(path / "config.json")
    files = weight_files(path)
    tensors: dict[str, StoredTensor] = {}
    for f in files:
        tensors.update(read_header(f))
    check_tensors(path, cfg, tensors)
    synthetic = None
    if (path / "synthetic.json").is_file():
        synthetic = json.loads((path / "synthetic.json").read_text())
    return Checkpoint(path, cfg, files, tensors, synthetic)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files: the one model.safetensors, or those the index's weight_map names."""
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path / INDEX}: no valid weight_map ({e})") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
    elif (path / SINGLE).is_file():
        files = [path / SINGLE]
    else:
        raise CheckpointError(f"{path}: no weights ({SINGLE} or {INDEX}) found")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: weight file missing (named by {INDEX})")
    return files


def read_header(file: Path) -> dict[str, StoredTensor]:
    """Tensor table of one safetensors file; the library checks the file is complete and sound."""
    try:
        with safe_open(str(file), framework="numpy"):
            pass
    except Exception as e:  # the library raises its own SafetensorError (and others on bad headers)
        raise CheckpointError(f"{file}: not a valid safetensors file ({e})") from None
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        out[name] = StoredTensor(file, info["dtype"], tuple(info["shape"]), 8 + n + info["data_offsets"][0])
    return out


def check_tensors(path: Path, cfg: Qwen3Config, tensors: dict[str, StoredTensor]) -> None:
    """Every tensor the export needs is there, with Hugging Face's shape and a float dtype."""
    for spec in layout.tensor_specs(cfg):
        t = tensors.get(spec.hf_name)
        if t is None:
            raise CheckpointError(f"{path}: tensor {spec.hf_name!r} missing from the checkpoint")
        if t.shape != layout.hf_shape(spec):
            raise CheckpointError(
                f"{path}: tensor {spec.hf_name!r} has shape {t.shape}, expected {layout.hf_shape(spec)}")
        if t.dtype not in SAFETENSORS:
            raise CheckpointError(f"{path}: tensor {spec.hf_name!r} has unsupported dtype {t.dtype}")
