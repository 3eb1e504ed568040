"""Open an export (see model_export/layout.py) and hand out read-only memory-mapped tensors.

Every rank of an MPI job maps the same files read-only, so the weights live once in the page
cache however many ranks there are, and nothing is copied: `tensor` and `shard` return views.

dtypes: a tensor comes back in its stored dtype. float32 and float16 are NumPy dtypes; bfloat16
has none, so bf16 tensors are handed out as uint16 arrays holding the bit patterns (the high half
of the float32 of the same value). In this project a uint16 weight array always means bf16:
`to_float` and `take_rows` widen it exactly, and the engine dispatches on `Export.tensor_dtype`
(or simply on `array.dtype == BF16`). In a bfloat16 export the norms stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from model_export import layout
from model_export.config import CheckpointError, Qwen3Config, read_json
from model_export.dtypes import BF16, EXPORT_DTYPES, bf16_to_float32
from model_export.export import sha256_file


def to_float(a: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """`a` as floating-point `dtype`; a uint16 array is read as bf16 bits and widened exactly.

    (A plain astype of the uint16 bits would silently turn bit patterns into integers.)
    """
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
    Matrices are in the export's dtype (uint16 bf16 bits in a bfloat16 export); the norms are
    float32 in float32 and bfloat16 exports.
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


class Export:
    """An opened export directory. Use `open_export` to create one."""

    def __init__(self, path: Path, manifest: dict, cfg: Qwen3Config) -> None:
        self.path = path
        self.manifest = manifest
        self.cfg = cfg
        tok = manifest.get("tokenizer")
        self.tokenizer_path: Path | None = path / tok if tok else None
        self._specs = {s.name: s for s in layout.tensor_specs(cfg)}
        self._maps: dict[str, np.memmap] = {}  # one read-only map per file, made on first use

    @property
    def dtype_name(self) -> str:
        """The weight matrices' dtype: "float32", "float16" or "bfloat16" (manifest "dtype")."""
        return self.manifest["dtype"]

    @property
    def dtype(self) -> np.dtype:
        """NumPy dtype of the arrays `tensor` returns for the matrices (uint16 bits for bfloat16)."""
        return EXPORT_DTYPES[self.manifest["dtype"]].storage

    def tensor_dtype(self, name: str) -> str:
        """Stored dtype of `name`: "float32", "float16" or "bfloat16" (norms may differ from dtype_name)."""
        return self._entry(name)["dtype"]

    def weight_bytes(self) -> int:
        """Bytes of all stored tensors (the embedding counted once when tied)."""
        return sum(int(np.prod(e["shape"], dtype=np.int64)) * EXPORT_DTYPES[e["dtype"]].itemsize
                   for e in self.manifest["tensors"].values())

    def tensor(self, name: str) -> np.ndarray:
        """The full tensor `name` (e.g. "layers.0.wq") as a read-only view of the file.

        In its stored dtype: a bfloat16 tensor comes back as uint16 bit patterns (see `to_float`).
        """
        entry = self._entry(name)
        dtype = EXPORT_DTYPES[entry["dtype"]].storage
        count = int(np.prod(entry["shape"], dtype=np.int64))
        raw = self._map(entry["file"])[entry["offset"]: entry["offset"] + count * dtype.itemsize]
        return raw.view(dtype).reshape(entry["shape"])

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
        for f in fields(LayerWeights):  # the field names are the export's tensor names
            name = f"layers.{i}.{f.name}"
            weights[f.name] = self.shard(name, blocks[self._specs[name].shard])
        return LayerWeights(**weights)

    def lm_head(self) -> np.ndarray:
        """(V, d): the output projection; the embedding itself when the two are tied."""
        return self.tensor("embed" if self.cfg.tie_word_embeddings else "lm_head")

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

    def _map(self, fname: str) -> np.memmap:
        if fname not in self._maps:
            self._maps[fname] = np.memmap(self.path / fname, dtype=np.uint8, mode="r")
        return self._maps[fname]


def open_export(path: str | Path, verify: bool = False) -> Export:
    """Open the export at `path`: check the manifest against the files (sizes; sha256 if `verify`)."""
    path = Path(path)
    manifest = read_manifest(path)
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
    """Every tensor the layout requires is present, with its shape, inside its file."""
    tensors, files = manifest["tensors"], manifest["files"]
    for spec in layout.tensor_specs(cfg):
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
        nbytes = int(np.prod(spec.shape, dtype=np.int64)) * EXPORT_DTYPES[entry["dtype"]].itemsize
        if entry["offset"] < 0 or entry["offset"] + nbytes > files[entry["file"]]["size"]:
            raise CheckpointError(f"{where} does not fit in {entry['file']}")
