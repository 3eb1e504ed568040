"""The float32 reference run of the low-precision measures, computed once and reused.

Every bf16 and int8 cell is measured against the float32 export's greedy run of the same prompt
(pipeline.study.lowprec): its tokens, which the cell is then fed, and its logits. That run is the
same for every cell of one attention algorithm, up to float32 rounding between layouts (what
verify holds float32 cells to: 1e-3 absolute, against bf16's and int8's differences of 1e-2 and
more), so the first cell that needs it computes it and later cells read it (the default matrix's
24 low-precision cells ran it 24 times before: docs/design-notes.md#reference-runs).

The key is a digest of everything the run depends on: the reference export's manifest (its
files' checksums), the prompt ids, the step count, the attention algorithm, and the engine's code
(ext's compiled kernels and pipeline/engine's sources), so no edit of any of them reads a stale
run. Written atomically by rank 0, which then removes the entries of other code versions (they
could never be read again); a cell records whether it computed the run or read it, and which
cell computed it. An entry also holds the prompt ids, so a program outside the engine that is
measured against it (the llama.cpp and torch baselines, pipeline.study.lowprec.load_reference)
can check it was run on the same prompt.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_export.atomic import write_bytes_atomic

if TYPE_CHECKING:  # only the annotation: compare writes entries without an MPI job of its own
    from pipeline.engine.comm import Comm

ROOT = Path(__file__).resolve().parents[2]
CODE_CHARS = 12  # of the code digest, leading each key


def code_digest() -> str:
    """sha256 over the engine's code: ext's compiled kernels and every pipeline/engine source."""
    h = hashlib.sha256()
    files = sorted((ROOT / "ext").glob("*.so")) + sorted((ROOT / "pipeline" / "engine").rglob("*.py"))
    for f in files:
        h.update(f.relative_to(ROOT).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def reference_key(export_path: str | Path, prompt: np.ndarray, steps: int, algo: str) -> str:
    """The cache entry's name, `<code>-<inputs>`: the engine's code digest, then what else the
    reference run depends on, hashed (the code prefix is what `prune` keeps)."""
    code = code_digest()
    h = hashlib.sha256()
    h.update((Path(export_path) / "manifest.json").read_bytes())
    h.update(np.asarray(prompt, np.int64).tobytes())
    h.update(json.dumps({"steps": steps, "algo": algo, "code": code}).encode())
    return f"{code[:CODE_CHARS]}-{h.hexdigest()[:32]}"


def prune(cache: Path, key: str) -> list[Path]:
    """Remove the entries another version of the engine's code computed (a key's code prefix
    differs from `key`'s): no later cell can read them. Returns what was removed."""
    code = key.split("-", 1)[0] + "-"
    stale = [f for f in cache.glob("*.npz") if f.stem != key and not f.name.startswith(code)]
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


Run = Callable[[], tuple[list[int], np.ndarray]]  # the reference's greedy tokens and (steps, V) logits


def store(path: Path, tokens: list[int], logits: np.ndarray, cell: str, prompt: np.ndarray) -> None:
    """Write one entry atomically, then remove the entries of other code versions beside it."""
    buf = io.BytesIO()
    np.savez(buf, tokens=np.asarray(tokens, np.int64), logits=logits, cell=np.array(cell),
             prompt_ids=np.asarray(prompt, np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())
    prune(path.parent, path.stem)


def reference_run(comm: Comm, cache: str | Path | None, key: str, cell: str, prompt: np.ndarray,
                  run: Run) -> tuple[list[int], np.ndarray | None, dict]:
    """(greedy tokens on every rank, logits on rank 0, provenance) of the reference run: read from
    `cache`/<key>.npz when there, else `run()` (collective) and written there by rank 0. Without a
    cache it always runs. Collective: every rank calls it alike."""
    path = None if cache is None else Path(cache) / f"{key}.npz"
    hit = comm.comm.bcast(path is not None and path.exists() if comm.rank == 0 else None, root=0)
    if hit:
        tokens, logits, source = None, None, None
        if comm.rank == 0:
            with np.load(path) as z:
                tokens, logits, source = [int(t) for t in z["tokens"]], z["logits"], str(z["cell"])
        tokens = comm.comm.bcast(tokens, root=0)
        return tokens, logits, {"reference_run": "cached", "reference_cell": comm.comm.bcast(source, root=0)}
    tokens, logits = run()
    if path is not None and comm.rank == 0:
        store(path, tokens, logits, cell, prompt)
    return tokens, logits if comm.rank == 0 else None, {"reference_run": "computed", "reference_cell": cell}
