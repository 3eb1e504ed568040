"""Buffer-based MPI collectives that keep the books: time spent and bytes sent per rank.

Every collective of the engine goes through here, so the benchmark can split each phase into
compute and communication and report bytes sent per token (as distributed-llama prints).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI


class Comm:
    """A thin wrapper over an MPI communicator; uppercase (buffer) collectives only."""

    def __init__(self, comm: MPI.Comm = MPI.COMM_WORLD) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.reset_counters()

    def reset_counters(self) -> None:
        self.seconds = 0.0
        self.bytes_sent = 0
        self.calls = 0

    def _account(self, t0: float, nbytes: int) -> None:
        self.seconds += MPI.Wtime() - t0
        self.bytes_sent += nbytes
        self.calls += 1

    def allreduce_sum(self, buf: np.ndarray) -> None:
        """buf <- sum over ranks, in place (no-op for one rank)."""
        if self.size == 1:
            return
        t0 = MPI.Wtime()
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        # A ring allreduce sends 2 (P-1)/P of the buffer from every rank.
        self._account(t0, 2 * (self.size - 1) * buf.nbytes // self.size)

    def allgatherv(self, send: np.ndarray, recv: np.ndarray, counts: np.ndarray,
                   displs: np.ndarray) -> None:
        """recv <- concatenation of every rank's `send`; counts/displs in elements of recv.dtype."""
        if self.size == 1:
            recv.reshape(-1)[displs[0]: displs[0] + send.size] = send.reshape(-1)
            return
        t0 = MPI.Wtime()
        self.comm.Allgatherv(send, [recv, (counts, displs)])
        self._account(t0, send.nbytes * (self.size - 1))

    def allgather(self, send: np.ndarray, recv: np.ndarray) -> None:
        """recv (P, *send.shape) <- every rank's `send`."""
        if self.size == 1:
            recv[0] = send
            return
        t0 = MPI.Wtime()
        self.comm.Allgather(send, recv)
        self._account(t0, send.nbytes * (self.size - 1))

    def bcast(self, buf: np.ndarray, root: int) -> None:
        if self.size == 1:
            return
        t0 = MPI.Wtime()
        self.comm.Bcast(buf, root=root)
        self._account(t0, buf.nbytes if self.rank == root else 0)

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def max(self, value: float) -> float:
        """The largest of one float over ranks (control-sized message)."""
        return value if self.size == 1 else self.comm.allreduce(value, op=MPI.MAX)
