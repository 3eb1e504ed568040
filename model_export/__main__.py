"""Command line: export a checkpoint, or verify an export.

    python -m pipeline export --checkpoint DIR --out DIR [--force] [--dtype {float32,float16,bf16}]
    python -m pipeline export --verify DIR
"""

from __future__ import annotations

import argparse
import sys
import time

from model_export.config import CheckpointError
from model_export.dtypes import EXPORT_DTYPES, choices
from model_export.export import export_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--checkpoint", metavar="DIR", help="Hugging Face Qwen3 checkpoint directory")
    action.add_argument("--verify", metavar="DIR", help="export to check against its manifest (sha256)")
    p.add_argument("--out", metavar="DIR", help="export directory to create (with --checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing export at --out")
    p.add_argument("--dtype", default="float32", choices=choices(EXPORT_DTYPES),
                   help="stored dtype of the weight matrices (bf16 = bfloat16; norms stay float32)")
    args = p.parse_args(argv)
    if args.checkpoint and not args.out:
        p.error("--checkpoint needs --out")
    return args


def verify(path: str) -> None:
    from model_export.reader import open_export  # the loader owns the manifest checks

    t0 = time.perf_counter()
    export = open_export(path, verify=True)
    print(f"ok: {path}: {len(export.manifest['files'])} files, {len(export.manifest['tensors'])} "
          f"tensors, sha256 verified in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.verify:
            verify(args.verify)
        else:
            export_checkpoint(args.checkpoint, args.out, force=args.force, dtype=args.dtype)
    except (CheckpointError, OSError) as e:
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)  # one line
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
