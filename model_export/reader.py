"""Open an export (see model_export/layout.py) and hand out read-only memory-mapped tensors.

Every rank of an MPI job maps the same files read-only, so the weights live once in the page
cache however many ranks there are, and nothing is copied: `tensor` and `shard` return views.

dtypes: a tensor comes back in its stored dtype. float32 and float16 are NumPy dtypes; bfloat16
has none, so bf16 tensors are handed out as uint16 arrays holding the bit patterns (the high half
of the float32 of the same value). In this project a uint16 weight array always means bf16:
`to_float` and `take_rows` widen it exactly, and the engine dispatches on `Export.tensor_dtype`
(or simply on `array.dtype == BF16`). In a bfloat16 export the norms stay float32.

int8 exports: the matrices come back as int8 views and their float32 scales as views too
(`scale`, the `*_scale` fields of LayerWeights, `lm_head_scale`); w = q * scale over the output
channels (model_export/quant.py). The scales of a row-major matrix are sliced with its rows;
those of a transposed one (wo_t, w_down_t) run over its columns, so every rank gets all of them.
`to_float` refuses int8: without its scales an int8 array is not a weight.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from model_export import layout
from model_export.config import CheckpointError, Qwen3Config, read_json
from model_export.dtypes import BF16, EXPORT_DTYPES, bf16_to_float32, lookup
from model_export.export import sha256_file


def to_float(a: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """`a` as floating-point `dtype`; a uint16 array is read as bf16 bits and widened exactly.

    (A plain astype of the uint16 bits would silently turn bit patterns into integers.)
    """
    if a.dtype == np.int8:  # the integers alone are not the weights: q * scale is
        raise TypeError("int8 weights need their scales: quant.dequantize(q, scale, axis)")
    if a.dtype == BF16:
        return np.asarray(bf16_to_float32(a), dtype=dtype)
    return np.asarray(a, dtype=dtype)


def take_rows(table: np.ndarray, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (T, d) float32 <- table[ids] for a float32, float16 or bf16 (uint16) table (V, d).

    The embedding lookup for every export dtype; only the T selected rows are read and widened.
    """
    if table.dtype == BF16:
        bf16_to_float32(table[ids], out=out)
    elif table.dtype == out.dtype:
        np.take(table, ids, axis=0, out=out)
    else:
        out[...] = table[ids]
    return out


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's weights for a block of H_r query heads, Hkv_r KV heads and I_r
    intermediate features (all of them unless `Export.layer` is given blocks).
    Matrices are in the export's dtype (uint16 bf16 bits in a bfloat16 export, int8 in an int8
    export); the norms are float32 in float32, bfloat16 and int8 exports.
    The `*_scale` fields are None except in an int8 export, where each is the float32 scale over
    the output channels of its matrix, w = q * scale: for the row-major matrices one per row of
    this block (sliced like the rows), for the transposed ones (wo_t, w_down_t) one per column,
    (d,), the same on every rank. All are zero-copy views of the export's files.
    """

    attn_norm: np.ndarray  # (d,)
    wq: np.ndarray  # (H_r*D, d)
    wk: np.ndarray  # (Hkv_r*D, d)
    wv: np.ndarray  # (Hkv_r*D, d)
    q_norm: np.ndarray  # (D,)
    k_norm: np.ndarray  # (D,)
    wo_t: np.ndarray  # (H_r*D, d)  o_proj transposed: input features are rows
    mlp_norm: np.ndarray  # (d,)
    w_gate: np.ndarray  # (I_r, d)
    w_up: np.ndarray  # (I_r, d)
    w_down_t: np.ndarray  # (I_r, d)  down_proj transposed
    wq_scale: np.ndarray | None = None  # (H_r*D,)
    wk_scale: np.ndarray | None = None  # (Hkv_r*D,)
    wv_scale: np.ndarray | None = None  # (Hkv_r*D,)
    wo_t_scale: np.ndarray | None = None  # (d,)  over wo_t's columns: all of them, on every rank
    w_gate_scale: np.ndarray | None = None  # (I_r,)
    w_up_scale: np.ndarray | None = None  # (I_r,)
    w_down_t_scale: np.ndarray | None = None  # (d,)  over w_down_t's columns


# the LayerWeights fields that are tensors of the export (the rest are their scales)
TENSOR_FIELDS = tuple(f.name for f in fields(LayerWeights) if not f.name.endswith("_scale"))


class Export:
    """An opened export directory. Use `open_export` to create one."""

    def __init__(self, path: Path, manifest: dict, cfg: Qwen3Config) -> None:
        self.path = path
        self.manifest = manifest
        self.cfg = cfg
        tok = manifest.get("tokenizer")
        self.tokenizer_path: Path | None = path / tok if tok else None
        quantized = EXPORT_DTYPES[manifest["dtype"]].quantized  # read_manifest checked the name
        self._specs = {s.name: s for s in layout.tensor_specs(cfg, own_head=quantized)}
        self._maps: dict[str, np.ndarray] = {}  # one read-only map per file, made on first use

    @property
    def dtype_name(self) -> str:
        """The weight matrices' dtype: "float32", "float16", "bfloat16" or "int8" (manifest "dtype")."""
        return self.manifest["dtype"]

    @property
    def dtype(self) -> np.dtype:
        """NumPy dtype of the arrays `tensor` returns for the matrices (uint16 bits for bfloat16).

        For int8, that of the layers' matrices and the lm_head; the embedding is bfloat16 there."""
        return EXPORT_DTYPES[self.manifest["dtype"]].storage

    def tensor_dtype(self, name: str) -> str:
        """Stored dtype of `name` (norms and an int8 export's embedding differ from dtype_name)."""
        return self._entry(name)["dtype"]

    def weight_bytes(self) -> int:
        """Bytes of all stored tensors and scales (the embedding counted once when tied and float)."""
        total = 0
        for e in self.manifest["tensors"].values():
            for t in (e, e.get("scale")):
                if t is not None:
                    total += int(np.prod(t["shape"], dtype=np.int64)) * EXPORT_DTYPES[t["dtype"]].itemsize
        return total

    def tensor(self, name: str) -> np.ndarray:
        """The full tensor `name` (e.g. "layers.0.wq") as a read-only view of the file.

        In its stored dtype: a bfloat16 tensor comes back as uint16 bit patterns (see `to_float`).
        """
        entry = self._entry(name)
        return self._view(entry["file"], entry)

    def scale(self, name: str, block: range | None = None) -> np.ndarray | None:
        """float32 scales of the int8 matrix `name` for `block` (as in `shard`): a zero-copy view.

        Row-major matrices: the scales of the block's rows. Transposed ones (wo_t, w_down_t): all
        (N,) of them, since their output channels are columns that every row block shares.
        None when `name` is not quantized (float exports, norms, an int8 export's embedding).
        """
        entry = self._entry(name)
        if "scale" not in entry:
            return None
        scale = self._view(entry["file"], entry["scale"])
        spec = self._specs[name]
        return scale if layout.output_axis(spec) == 1 else scale[layout.shard_rows(spec, self.cfg, block)]

    def scale_axis(self, name: str) -> int | None:
        """The axis of `name` its scales run along (0: rows, 1: columns); None when not quantized."""
        scale = self._entry(name).get("scale")
        return None if scale is None else scale["axis"]

    def shard(self, name: str, block: range | None = None) -> np.ndarray:
        """The rows of `name` holding `block` of its query heads (wq, wo_t), KV heads (wk, wv) or
        intermediate features (w_gate, w_up, w_down_t): a zero-copy view. The whole tensor when
        `block` is None; tensors that are not split (norms, embedding, head) come back whole.
        """
        spec = self._specs.get(name)
        if spec is None:
            raise KeyError(f"{self.path}: no tensor {name!r} in this export")
        return self.tensor(name)[layout.shard_rows(spec, self.cfg, block)]

    def layer(self, i: int, q_heads: range | None = None, kv_heads: range | None = None,
              features: range | None = None) -> LayerWeights:
        """Layer i's weights for a block of query heads, KV heads and MLP features (all when None)."""
        if not 0 <= i < self.cfg.num_hidden_layers:
            raise IndexError(f"layer {i} out of range (model has {self.cfg.num_hidden_layers})")
        blocks = {"q": q_heads, "kv": kv_heads, "mlp": features, None: None}
        weights = {}
        for field in TENSOR_FIELDS:  # the field names are the export's tensor names
            name = f"layers.{i}.{field}"
            block = blocks[self._specs[name].shard]
            weights[field] = self.shard(name, block)
            scale = self.scale(name, block)
            if scale is not None:
                weights[field + "_scale"] = scale
        return LayerWeights(**weights)

    def lm_head(self) -> np.ndarray:
        """(V, d): the output projection; the embedding itself when the two are tied (except in
        an int8 export, which holds an int8 lm_head of its own beside the bf16 embedding)."""
        return self.tensor("lm_head" if "lm_head" in self.manifest["tensors"] else "embed")

    def lm_head_scale(self) -> np.ndarray | None:
        """(V,) float32 scales of an int8 lm_head's rows (slice them with its rows); None otherwise."""
        return self.scale("lm_head") if "lm_head" in self.manifest["tensors"] else None

    def verify(self) -> None:
        """Recompute every file's sha256; raise CheckpointError naming the first mismatch."""
        for fname, info in self.manifest["files"].items():
            digest = sha256_file(self.path / fname)
            if digest != info["sha256"]:
                raise CheckpointError(
                    f"{self.path / fname}: sha256 mismatch (manifest {info['sha256'][:12]}..., "
                    f"file {digest[:12]}...)")

    def _entry(self, name: str) -> dict:
        try:
            return self.manifest["tensors"][name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r} in this export") from None

    def _view(self, fname: str, entry: dict) -> np.ndarray:
        """The array an entry (a tensor's, or its "scale") describes, viewed in the file's map."""
        dtype = EXPORT_DTYPES[entry["dtype"]].storage
        count = int(np.prod(entry["shape"], dtype=np.int64))
        raw = self._map(fname)[entry["offset"]: entry["offset"] + count * dtype.itemsize]
        return raw.view(dtype).reshape(entry["shape"])

    def _map(self, fname: str) -> np.ndarray:
        if fname not in self._maps:
            self._maps[fname] = map_file(self.path / fname)
        return self._maps[fname]


def map_file(path: Path) -> np.ndarray:
    """The file as a read-only uint8 array over a shared map, advised for 2 MiB pages: what a
    decode step reads faults in as 2 MiB page-cache folios, mapped with one TLB entry each
    (docs/design-notes.md#huge-folios). A no-op where the OS has no such advice."""
    with open(path, "rb") as f:
        if not os.fstat(f.fileno()).st_size:
            return np.zeros(0, np.uint8)   # mmap refuses an empty file
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(m, np.uint8)


def open_export(path: str | Path, verify: bool = False, dtype: str | None = None) -> Export:
    """Open the export at `path`: check the manifest against the files (sizes; sha256 if `verify`).

    `dtype` (a name or alias, e.g. "int8"): the dtype the caller needs; an export holding another
    one, or a name no export can hold, is a CheckpointError of one line naming both.
    """
    path = Path(path)
    wanted = lookup(dtype).name if dtype is not None else None  # an unknown name: before any I/O
    manifest = read_manifest(path)
    if wanted is not None and manifest["dtype"] != wanted:
        raise CheckpointError(f"{path}: the export holds {manifest['dtype']} weights, not {wanted} "
                              f"(re-export with --dtype {dtype})")
    cfg = Qwen3Config.from_dict(manifest["config"], where=str(path / "manifest.json"))
    _check_files(path, manifest)
    _check_tensors(path, manifest, cfg)
    export = Export(path, manifest, cfg)
    if verify:
        export.verify()
    return export


def read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"{path}: export directory not found")
    mpath = path / "manifest.json"
    manifest = read_json(mpath, "not found (not an export, or an unfinished one)")
    if manifest.get("format") != layout.FORMAT or manifest.get("version") != layout.VERSION:
        raise CheckpointError(
            f"{mpath}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {layout.FORMAT!r} version {layout.VERSION}")
    for key in ("config", "dtype", "files", "tensors"):
        if key not in manifest:
            raise CheckpointError(f"{mpath}: missing key {key!r}")
    if manifest["dtype"] not in EXPORT_DTYPES:
        raise CheckpointError(f"{mpath}: dtype {manifest['dtype']!r} is not one this reader knows "
                              f"(choose from {sorted(EXPORT_DTYPES)})")
    return manifest


def _check_files(path: Path, manifest: dict) -> None:
    for fname, info in manifest["files"].items():
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"{fpath}: file missing")
        size = fpath.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                f"{fpath}: size {size} bytes, manifest says {info['size']} (truncated or replaced)")


def _check_tensors(path: Path, manifest: dict, cfg: Qwen3Config) -> None:
    """Every tensor the layout requires is present, with its shape (and its scales when quantized),
    inside its file."""
    tensors, files = manifest["tensors"], manifest["files"]
    for spec in layout.tensor_specs(cfg, own_head=EXPORT_DTYPES[manifest["dtype"]].quantized):
        entry = tensors.get(spec.name)
        where = f"{path / 'manifest.json'}: tensor {spec.name!r}"
        if entry is None:
            raise CheckpointError(f"{where} missing")
        if tuple(entry["shape"]) != spec.shape:
            raise CheckpointError(f"{where} has shape {tuple(entry['shape'])}, expected {spec.shape}")
        if entry["dtype"] not in EXPORT_DTYPES:
            raise CheckpointError(f"{where} has unsupported dtype {entry['dtype']!r}")
        if entry["file"] not in files:
            raise CheckpointError(f"{where} lies in {entry['file']!r}, which the manifest does not list")
        size = files[entry["file"]]["size"]
        _check_fits(where, entry, entry["file"], size)
        if EXPORT_DTYPES[entry["dtype"]].quantized:
            _check_scale(where, spec, entry, size)


def _check_fits(where: str, entry: dict, fname: str, size: int) -> None:
    nbytes = int(np.prod(entry["shape"], dtype=np.int64)) * EXPORT_DTYPES[entry["dtype"]].itemsize
    if entry["offset"] < 0 or entry["offset"] + nbytes > size:
        raise CheckpointError(f"{where} does not fit in {fname}")


def _check_scale(where: str, spec: layout.TensorSpec, entry: dict, size: int) -> None:
    """A quantized tensor's scales: float32, one per output channel, along the layout's axis."""
    scale, axis = entry.get("scale"), layout.output_axis(spec)
    row = EXPORT_DTYPES[entry["dtype"]]
    if not isinstance(scale, dict):
        raise CheckpointError(f"{where} is {entry['dtype']} without its scales")
    if scale.get("dtype") != row.scale_dtype or scale.get("axis") != axis \
            or scale.get("shape") != [spec.shape[axis]]:
        raise CheckpointError(f"{where}: scales {scale.get('dtype')} {scale.get('shape')} along axis "
                              f"{scale.get('axis')}, expected {row.scale_dtype} [{spec.shape[axis]}] "
                              f"along axis {axis}")
    _check_fits(where + "'s scale", scale, entry["file"], size)
