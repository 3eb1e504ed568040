"""Export a Hugging Face Qwen3 checkpoint into per-layer subgraph files plus manifest.json.

Tensor by tensor: each source tensor is memory-mapped, converted in row blocks and appended to
its subgraph file, so memory holds one source tensor's pages and one block, never the model.
The export is written into a hidden temporary directory next to --out and renamed into place
only when complete, so an interrupted export never looks finished.

Stored dtypes (`--dtype`): "float32" (default), "float16", or "bf16" (= "bfloat16"). A bfloat16
export keeps the matrices (embedding, q/k/v/o, gate/up/down, lm_head) as raw bf16 bit patterns
(little-endian uint16, half the bytes of float32; a bf16 checkpoint's bits are copied unchanged)
and the 1-D norm weights as float32: they are 0.02% of the bytes, and the fused norm kernels
then need no bf16 variant. The manifest's top-level "dtype" is the matrices' dtype
("bfloat16"); each tensor entry records its own.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from model_export import dtypes, layout
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
        files, tensors = write_tensors(ckpt, tmp, dtype, progress)
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
    """The dtype `spec` is stored in: the norms (1-D) in the table's norm_dtype (float32 for bfloat16)."""
    return dtypes.EXPORT_DTYPES[dtype].norm_dtype if len(spec.shape) == 1 else dtype


def write_tensors(ckpt: Checkpoint, tmp: Path, dtype: str,
                  progress: Callable[[str], None]) -> tuple[dict, dict]:
    """Write every subgraph file; return the manifest's "files" and "tensors" tables."""
    specs = layout.tensor_specs(ckpt.cfg)
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


def write_file(ckpt: Checkpoint, path: Path, group: list[layout.TensorSpec], dtype: str,
               tensors: dict) -> dict:
    """Write `group` into one file, each tensor at an ALIGN-byte offset; hash while writing."""
    h = hashlib.sha256()
    offset = 0
    with open(path, "wb") as f:
        for spec in group:
            pad = -offset % layout.ALIGN
            f.write(b"\0" * pad)
            h.update(b"\0" * pad)
            offset += pad
            stored = stored_dtype(spec, dtype)
            tensors[spec.name] = {"file": path.name, "offset": offset, "shape": list(spec.shape),
                                  "dtype": stored, "hf_name": spec.hf_name,
                                  "transposed": spec.transpose, "shard": spec.shard}
            for block in ckpt.blocks(spec.hf_name, spec.transpose, stored):
                data = memoryview(block).cast("B")
                f.write(data)
                h.update(data)
                offset += len(data)
    return {"size": offset, "sha256": h.hexdigest()}


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
    return {"format": layout.FORMAT, "version": layout.VERSION,
            "config": {**ckpt.cfg.to_dict(), "model_type": "qwen3"},
            "dtype": dtype, "source": source, "tokenizer": tokenizer,
            "files": files, "tensors": tensors,
            "created": datetime.now(UTC).isoformat(timespec="seconds")}


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
