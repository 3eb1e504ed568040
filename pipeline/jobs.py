"""What bench and generate share: thread set-up, up-front validation, MPI-safe failure."""

from __future__ import annotations

import os
import sys

from model_export.config import CheckpointError
from pipeline.comm import Comm
from pipeline.model import check_job
from pipeline.weights import Export, open_export


def threads_per_rank(total: int | None, nranks: int) -> int:
    """Threads per rank = max(1, cores // P); `total` defaults to this machine's cores."""
    return max(1, (total or os.cpu_count() or 1) // nranks)


def open_and_check(comm: Comm, export_dir: str, strategy: str, algo: str, prompt_len: int,
                   gen_len: int, verify: bool = False) -> Export:
    """Open the export and validate the job on every rank; on any rank's error, rank 0 prints one
    line and every rank exits with status 2 (no rank is left waiting in a collective)."""
    export, message = None, None
    try:
        export = open_export(export_dir, verify=verify)
        check_job(export, strategy, algo, comm.size, prompt_len, gen_len)
    except (CheckpointError, ValueError, OSError) as e:
        message = str(e)
    messages = comm.comm.allgather(message) if comm.size > 1 else [message]
    failed = [m for m in messages if m]
    if failed:
        if comm.rank == 0:
            print(f"error: {failed[0]}", file=sys.stderr, flush=True)
        sys.exit(2)
    return export


def fail(comm: Comm, message: str) -> None:
    """The same failure on every rank (SPMD validation): rank 0 says it, everyone exits 2."""
    if comm.rank == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
