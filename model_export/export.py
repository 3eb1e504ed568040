"""Export a Hugging Face Qwen3 checkpoint into per-layer subgraph files plus manifest.json.

Tensor by tensor: each source tensor is memory-mapped, converted in row blocks and appended to
its subgraph file, so memory holds one source tensor's pages and one block, never the model.
The export is written into a hidden temporary directory next to --out and renamed into place
only when complete, so an interrupted export never looks finished.

Stored dtypes (`--dtype`): "float32" (default), "float16", "bf16" (= "bfloat16") or "int8". A bfloat16
export keeps the matrices (embedding, q/k/v/o, gate/up/down, lm_head) as raw bf16 bit patterns
(little-endian uint16, half the bytes of float32; a bf16 checkpoint's bits are copied unchanged)
and the 1-D norm weights as float32: they are 0.02% of the bytes, and the fused norm kernels
then need no bf16 variant. The manifest's top-level "dtype" is the matrices' dtype
("bfloat16"); each tensor entry records its own.

An int8 export stores the same matrices, plus the lm_head (a separate int8 copy when it is tied
to the embedding), as int8 of the same shape and row order, each followed in its file by its
float32 scales over the output channels (model_export/quant.py; the entry's "scale" gives their
offset, shape and axis). The embedding stays bf16 and the norms float32; the manifest's
"quantization" records the granularity and the rule.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from model_export import dtypes, layout, quant
from model_export.atomic import atomic_directory, write_json_atomic
from model_export.checkpoint import Checkpoint, open_checkpoint
from model_export.config import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, force: bool = False,
                      dtype: str = "float32", progress: Callable[[str], None] = log) -> dict:
    """Export `checkpoint` to `out` atomically; return the manifest. Raises CheckpointError."""
    t0 = time.perf_counter()
    checkpoint, out = Path(checkpoint).absolute(), Path(out).absolute()
    dtype = dtypes.lookup(dtype).name
    ckpt = open_checkpoint(checkpoint)
    check_out(out, force)
    with atomic_directory(out) as tmp:
        files, tensors = write_tensors(ckpt, tmp, dtype, progress)  # every file hashed as written
        tokenizer = copy_tokenizer(checkpoint, tmp)
        manifest = build_manifest(ckpt, dtype, files, tensors, tokenizer)
        manifest["export_seconds"] = round(time.perf_counter() - t0, 3)
        write_json_atomic(tmp / "manifest.json", manifest, indent=1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    total = sum(f["size"] for f in files.values())
    progress(f"exported {len(tensors)} tensors ({total / 1e9:.2f} GB) to {out} in "
             f"{time.perf_counter() - t0:.1f} s, peak memory {peak_mb:.0f} MB")
    return manifest


def check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite an export without --force, and anything else always."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory")
    if (out / "manifest.json").is_file():
        if not force:
            raise CheckpointError(f"{out}: already holds an export (use --force to replace it)")
    elif any(out.iterdir()):
        raise CheckpointError(f"{out}: exists, is not empty and is not an export; refusing to overwrite")


def stored_dtype(spec: layout.TensorSpec, dtype: str) -> str:
    """The dtype `spec` is stored in: the norms (1-D) in the table's norm_dtype (float32 for bfloat16),
    the embedding in its embed_dtype (bfloat16 for int8), every other matrix in `dtype`."""
    row = dtypes.EXPORT_DTYPES[dtype]
    if len(spec.shape) == 1:
        return row.norm_dtype
    return (row.embed_dtype or dtype) if spec.name == "embed" else dtype


def write_tensors(ckpt: Checkpoint, tmp: Path, dtype: str,
                  progress: Callable[[str], None]) -> tuple[dict, dict]:
    """Write every subgraph file; return the manifest's "files" and "tensors" tables."""
    specs = layout.tensor_specs(ckpt.cfg, own_head=dtypes.EXPORT_DTYPES[dtype].quantized)
    files: dict[str, dict] = {}
    tensors: dict[str, dict] = {}
    t0 = time.perf_counter()
    for fname in dict.fromkeys(s.file for s in specs):  # file order, each once
        group = [s for s in specs if s.file == fname]
        files[fname] = write_file(ckpt, tmp / fname, group, dtype, tensors)
        if fname.endswith(".mlp.bin"):  # the last file of a layer
            i = int(fname[len("layer"):len("layer") + 3])
            progress(f"layer {i + 1}/{ckpt.cfg.num_hidden_layers} written "
                     f"({time.perf_counter() - t0:.1f} s)")
    return files, tensors


class HashedFile:
    """An open file that hashes what it writes and pads every tensor to an ALIGN-byte offset."""

    def __init__(self, f) -> None:
        self.f, self.h, self.offset = f, hashlib.sha256(), 0

    def write(self, data: memoryview | bytes) -> None:
        self.f.write(data)
        self.h.update(data)
        self.offset += len(data)

    def align(self) -> int:
        self.write(b"\0" * (-self.offset % layout.ALIGN))
        return self.offset


def write_file(ckpt: Checkpoint, path: Path, group: list[layout.TensorSpec], dtype: str,
               tensors: dict) -> dict:
    """Write `group` into one file, each tensor at an ALIGN-byte offset; hash while writing."""
    with open(path, "wb") as f:
        out = HashedFile(f)
        for spec in group:
            stored = stored_dtype(spec, dtype)
            entry = tensors[spec.name] = {
                "file": path.name, "offset": out.align(), "shape": list(spec.shape), "dtype": stored,
                "hf_name": spec.hf_name, "transposed": spec.transpose, "shard": spec.shard}
            if dtypes.EXPORT_DTYPES[stored].quantized:
                entry["scale"] = write_quantized(ckpt, spec, out)
            else:
                for block in ckpt.blocks(spec.hf_name, spec.transpose, stored):
                    out.write(memoryview(block).cast("B"))
        settle(f)
    return {"size": out.offset, "sha256": out.h.hexdigest()}


def settle(f: BinaryIO) -> None:
    """Put a written file on disk and out of the page cache. On disk: the manifest that names it
    is renamed into place after it. Out of the cache: the cache holds what a write put there in
    small folios, mapped one 4 KiB page per TLB entry; read back through the reader's map, the
    file comes in as 2 MiB folios (docs/design-notes.md#huge-folios)."""
    f.flush()
    os.fsync(f.fileno())
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def write_quantized(ckpt: Checkpoint, spec: layout.TensorSpec, out: HashedFile) -> dict:
    """Write `spec` as int8 in its stored layout, then its float32 scales; return the scale entry.

    Two passes over the source: the scales need every K of a channel before any q of it
    (for a transposed matrix a channel is a column, spread over all row blocks).
    """
    try:  # the Hugging Face rows are the output channels, whatever the stored layout
        scale = quant.channel_scales(ckpt.blocks(spec.hf_name, False, "float32"))
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: tensor {spec.hf_name!r}: {e}") from None
    axis, row = layout.output_axis(spec), 0
    for block in ckpt.blocks(spec.hf_name, spec.transpose, "float32"):
        s = scale[row:row + len(block), None] if axis == 0 else scale[None, :]
        out.write(memoryview(quant.quantize(block, s)).cast("B"))
        row += len(block)
    offset = out.align()
    out.write(memoryview(scale).cast("B"))
    return {"offset": offset, "shape": [len(scale)], "dtype": "float32", "axis": axis}


def copy_tokenizer(checkpoint: Path, tmp: Path) -> str | None:
    for name in TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, tmp / name)
    return "tokenizer.json" if (tmp / "tokenizer.json").is_file() else None


def build_manifest(ckpt: Checkpoint, dtype: str, files: dict, tensors: dict,
                   tokenizer: str | None) -> dict:
    source_files = {f.name: sha256_file(f) for f in ckpt.files}
    # digest of the checkpoint: sha256 over its weight files' sha256s, in file-name order
    digest = hashlib.sha256("".join(source_files[n] for n in sorted(source_files)).encode()).hexdigest()
    source = {"checkpoint": str(ckpt.path), "synthetic": ckpt.synthetic is not None,
              "digest": digest, "files": source_files}
    if ckpt.synthetic is not None:
        source["synthetic_params"] = ckpt.synthetic
    manifest = {"format": layout.FORMAT, "version": layout.VERSION,
                "config": {**ckpt.cfg.to_dict(), "model_type": "qwen3"},
                "dtype": dtype, "source": source, "tokenizer": tokenizer,
                "files": files, "tensors": tensors,
                "created": datetime.now(UTC).isoformat(timespec="seconds")}
    row = dtypes.EXPORT_DTYPES[dtype]
    if row.quantized:
        manifest["quantization"] = {
            "dtype": dtype, "scale_dtype": row.scale_dtype, "granularity": quant.GRANULARITY,
            "rule": quant.RULE, "qmax": quant.QMAX,
            "tensors": sorted(n for n, e in tensors.items() if "scale" in e)}
    return manifest


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
