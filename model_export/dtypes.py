"""The one table of dtypes: our names, how their bytes are held, and what safetensors and HF call them.

NumPy has no bfloat16, so bfloat16 is held as its raw bit patterns in uint16 (the high half of the
float32 of the same value) everywhere: in checkpoints, in exports and in the arrays the reader
hands out. `bf16_to_float32` widens them exactly; `float32_to_bf16` narrows with round to nearest
even, as torch's `.to(torch.bfloat16)` does.

int8 is a quantized dtype: its matrices are int8 with a float32 scale per output channel
(`scale_dtype`; the rule is model_export/quant.py's), and its embedding is stored as `embed_dtype`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_export.config import CheckpointError


@dataclass(frozen=True)
class DType:
    name: str  # ours: the manifest's "dtype", the export's --dtype
    storage: np.dtype  # the NumPy dtype of its bytes, little-endian (bfloat16: uint16 bit patterns)
    safetensors: str  # the code in a safetensors header
    torch_dtype: str  # the name in a Hugging Face config.json ("torch_dtype", "dtype")
    norm_dtype: str  # what the 1-D norm weights of an export of this dtype are stored in
    export: bool  # an export may store it
    checkpoint: bool  # a Hugging Face checkpoint may store it (and synthetic can write it)
    scale_dtype: str | None = None  # quantized: the dtype of the per-channel scales (None: a float dtype)
    embed_dtype: str | None = None  # what the embedding table is stored in (None: this dtype itself)

    @property
    def quantized(self) -> bool:
        """Its matrices are integers that need their scales (`scale_dtype`) to mean anything."""
        return self.scale_dtype is not None

    @property
    def itemsize(self) -> int:
        """Bytes per stored element."""
        return self.storage.itemsize


TABLE = (
    DType("float32", np.dtype("<f4"), "F32", "float32", "float32", export=True, checkpoint=True),
    DType("float16", np.dtype("<f2"), "F16", "float16", "float16", export=True, checkpoint=True),
    # bf16 norms stay float32: 0.02% of the bytes, and the fused norm kernels need no bf16 variant
    DType("bfloat16", np.dtype("<u2"), "BF16", "bfloat16", "float32", export=True, checkpoint=True),
    DType("float64", np.dtype("<f8"), "F64", "float64", "float64", export=False, checkpoint=True),
    # int8 matrices (q/k/v/o, gate/up/down, lm_head) with float32 scales per output channel; the
    # embedding is only looked up by row, so it stays bf16: exact for the bf16 checkpoints Qwen3
    # ships, half the bytes of float32 (docs/design-notes.md#int8-export)
    DType("int8", np.dtype("i1"), "I8", "int8", "float32", export=True, checkpoint=False,
          scale_dtype="float32", embed_dtype="bfloat16"),
)
DTYPES: dict[str, DType] = {d.name: d for d in TABLE}
ALIASES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}
EXPORT_DTYPES: dict[str, DType] = {d.name: d for d in TABLE if d.export}
CHECKPOINT_DTYPES: dict[str, DType] = {d.name: d for d in TABLE if d.checkpoint}
SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in CHECKPOINT_DTYPES.values()}
BF16 = DTYPES["bfloat16"].storage  # in this project a uint16 weight array always means bf16 bits


def choices(table: dict[str, DType]) -> list[str]:
    """The names (and aliases) a command line accepts for the dtypes of `table`."""
    return sorted([*table, *(alias for alias, name in ALIASES.items() if name in table)])


def lookup(name: str, table: dict[str, DType] = EXPORT_DTYPES, what: str = "export dtype") -> DType:
    """The row of `name` (or of its alias) in `table`; CheckpointError listing the choices otherwise."""
    row = table.get(ALIASES.get(name, name))
    if row is None:
        raise CheckpointError(f"unsupported {what} {name!r} (choose from {choices(table)})")
    return row


def itemsize(name: str) -> int:
    """Bytes per element of the dtype called `name` (ours or an alias)."""
    return lookup(name, DTYPES, "dtype").itemsize


def bf16_to_float32(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Exact widening of bf16 bit patterns (uint16) to float32: the bits become the high half."""
    if out is None:
        out = np.empty(np.shape(bits), np.float32)
    np.left_shift(bits, 16, out=out.view(np.uint32), dtype=np.uint32)
    return out


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), rounding to nearest even; NaN stays a (quiet) NaN.

    Adding 0x7FFF plus the lowest kept bit, then truncating, is round-half-to-even on the bits;
    without the NaN guard a NaN with a small payload would round up into infinity.
    """
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out
