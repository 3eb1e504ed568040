"""Command line: export a checkpoint, or verify an export.

    python -m pipeline export --checkpoint DIR --out DIR [--force] [--dtype {float32,float16,bf16,int8}]
    python -m pipeline export --verify DIR [--dtype DTYPE]

A --dtype no export can hold is one line naming it and the choices (exit 2) before any work;
with --verify, --dtype is the dtype the export must hold.
"""

from __future__ import annotations

import argparse
import sys
import time

from model_export.config import CheckpointError
from model_export.dtypes import EXPORT_DTYPES, choices, lookup
from model_export.export import export_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--checkpoint", metavar="DIR", help="Hugging Face Qwen3 checkpoint directory")
    action.add_argument("--verify", metavar="DIR", help="export to check against its manifest (sha256)")
    p.add_argument("--out", metavar="DIR", help="export directory to create (with --checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing export at --out")
    p.add_argument("--dtype", default=None, metavar="DTYPE",
                   help=f"stored dtype of the weight matrices, one of {choices(EXPORT_DTYPES)} (default "
                        "float32; bf16 = bfloat16; int8: int8 with float32 scales per output channel, "
                        "bf16 embedding; norms stay float32)")
    args = p.parse_args(argv)
    if args.checkpoint and not args.out:
        p.error("--checkpoint needs --out")
    return args


def verify(path: str, dtype: str | None = None) -> None:
    from model_export.reader import open_export  # the loader owns the manifest checks

    t0 = time.perf_counter()
    export = open_export(path, verify=True, dtype=dtype)
    print(f"ok: {path}: {len(export.manifest['files'])} files, {len(export.manifest['tensors'])} "
          f"tensors, sha256 verified in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # a bad --dtype: one line naming the option and the choices, before any work
        dtype = lookup(args.dtype).name if args.dtype is not None else None
    except CheckpointError as e:
        print(f"error: --dtype: {e}", file=sys.stderr)
        return 2
    try:
        if args.verify:
            verify(args.verify, dtype)
        else:
            export_checkpoint(args.checkpoint, args.out, force=args.force, dtype=dtype or "float32")
    except (CheckpointError, OSError) as e:
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)  # one line
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
