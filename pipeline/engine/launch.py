"""What bench and generate share: threads per rank and MPI-safe up-front validation."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from model_export.config import CheckpointError
from pipeline.engine.comm import Comm

T = TypeVar("T")


def threads_per_rank(total: int | None, nranks: int) -> int:
    """Threads per rank = max(1, cores // P); `total` defaults to this machine's cores."""
    return max(1, (total or os.cpu_count() or 1) // nranks)


def validated(comm: Comm, setup: Callable[[], T]) -> T:
    """Run `setup` (open the export, check the job) on every rank before any heavy work.

    If it raises a user-facing error on any rank, rank 0 prints that one line and every rank
    exits with status 2: the ranks agree through one small allgather, so none is left waiting.
    """
    value, message = None, None
    try:
        value = setup()
    except (CheckpointError, ValueError, KeyError, OSError) as e:
        message = str(e).strip("'\"")
    messages = comm.comm.allgather(message) if comm.size > 1 else [message]
    failed = [m for m in messages if m]
    if failed:
        if comm.rank == 0:
            print(f"error: {failed[0]}", file=sys.stderr, flush=True)
        sys.exit(2)
    return value
