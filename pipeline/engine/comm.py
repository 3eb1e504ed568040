"""Buffer-based MPI collectives that keep the books: time spent and bytes sent per rank.

Every collective of the engine goes through here, so the benchmark can split each phase into
compute and communication and report bytes sent per token (as distributed-llama prints).
The time inside a collective is split further by arrival skew: each call's entry time is kept,
and after a timed region (never inside one) the ranks compare them. Until the last rank arrives
a rank is waiting (the imbalance of the work before the call); after that it is transferring.
Point-to-point messages (a pipeline's stage to stage Send/Recv) are split the same way against
their partner's entry: a Recv posted before the matching Send waits for it.

Two-level layouts run on sub-communicators (`split`); a parent's books include its children's,
so the benchmark reads one set of numbers per rank whatever the layout.
"""

from __future__ import annotations

import socket

import numpy as np
from mpi4py import MPI


def _boot_id() -> str:
    """This kernel's boot id (one per machine, shared by its network namespaces)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


class Comm:
    """A thin wrapper over an MPI communicator; uppercase (buffer) collectives only."""

    def __init__(self, comm: MPI.Comm = MPI.COMM_WORLD, clock_offset: float | None = None) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.children: list[Comm] = []  # sub-communicators made by split(), in creation order
        if clock_offset is None:
            clock_offset = self._clock_offset() if self.size > 1 else 0.0
        self.clock_offset = clock_offset
        # (calls, 2) MPI.Wtime() at each collective's start and end, and (messages, 4) each Send's
        # or Recv's start, end, peer and +1/-1 (send/recv); kept across resets and grown by
        # doubling, so the decode loop allocates nothing for the books
        self._times = np.empty((4096, 2), dtype=np.float64)
        self._p2p = np.empty((1024, 4), dtype=np.float64)
        self.reset_counters()

    def split(self, color: int, key: int) -> Comm:
        """The sub-communicator of the ranks with this `color`, ordered by `key` (collective)."""
        child = Comm(self.comm.Split(color, key), clock_offset=self.clock_offset)
        self.children.append(child)
        return child

    def reset_counters(self) -> None:
        self._seconds = 0.0
        self._bytes_sent = 0
        self.calls = 0
        self.messages = 0
        for child in self.children:
            child.reset_counters()

    @property
    def seconds(self) -> float:
        """Seconds inside this communicator's calls and its children's since reset_counters()."""
        return self._seconds + sum(c.seconds for c in self.children)

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank sent through this communicator and its children since reset_counters()."""
        return self._bytes_sent + sum(c.bytes_sent for c in self.children)

    def _account(self, t0: float, nbytes: int) -> None:
        t1 = MPI.Wtime()
        self._seconds += t1 - t0
        self._bytes_sent += nbytes
        if self.calls == len(self._times):
            self._times = np.concatenate([self._times, np.empty_like(self._times)])
        self._times[self.calls] = t0, t1
        self.calls += 1

    def _account_p2p(self, t0: float, nbytes: int, peer: int, direction: int) -> None:
        t1 = MPI.Wtime()
        self._seconds += t1 - t0
        self._bytes_sent += nbytes
        if self.messages == len(self._p2p):
            self._p2p = np.concatenate([self._p2p, np.empty_like(self._p2p)])
        self._p2p[self.messages] = t0, t1, peer, direction
        self.messages += 1

    def _clock_offset(self, rounds: int = 8) -> float:
        """Seconds to add to this rank's MPI.Wtime() to read rank 0's clock (0 on rank 0).

        Ranks under rank 0's kernel (same boot id: this host, or a network namespace of it) read
        the same clock: 0, since a ping-pong on a loaded machine would only add its error. Ranks
        on other hosts have clocks of their own; the ping-pong with the shortest round trip
        bounds the error by half of it (tens of us over TCP), as NTP does.
        """
        boots = self.comm.allgather(_boot_id())
        best_rtt, offset = float("inf"), 0.0
        for r in (r for r in range(1, self.size) if boots[r] != boots[0]):
            for _ in range(rounds):
                if self.rank == 0:
                    self.comm.recv(source=r, tag=7)
                    self.comm.send(MPI.Wtime(), dest=r, tag=7)
                elif self.rank == r:
                    t0 = MPI.Wtime()
                    self.comm.send(None, dest=0, tag=7)
                    server = self.comm.recv(source=0, tag=7)
                    t1 = MPI.Wtime()
                    if t1 - t0 < best_rtt:
                        best_rtt, offset = t1 - t0, server - (t0 + t1) / 2
        return offset

    def arrival_split(self) -> tuple[float, float]:
        """(transfer_s, wait_s) of this rank over the calls since reset_counters(), its children's
        included.

        Itself collective (on this communicator and each child): call it after a timed region.
        """
        transfer, wait = self._collective_split()
        p2p_transfer, p2p_wait = self._p2p_split()
        transfer, wait = transfer + p2p_transfer, wait + p2p_wait
        for child in self.children:
            t, w = child.arrival_split()
            transfer, wait = transfer + t, wait + w
        return transfer, wait

    def _p2p_split(self) -> tuple[float, float]:
        """(transfer_s, wait_s) of this rank's Sends and Recvs: the n-th message from a to b is
        matched with b's n-th Recv from a (MPI keeps their order); until the partner enters, a
        rank waits."""
        if self.size == 1:
            return 0.0, 0.0
        mine = self._p2p[:self.messages].copy()
        mine[:, :2] += self.clock_offset
        everyone = self.comm.allgather(mine)
        transfer = wait = 0.0
        for peer in {int(p) for p in mine[:, 2]}:
            for direction in (1, -1):
                ours = mine[(mine[:, 2] == peer) & (mine[:, 3] == direction)]
                theirs = everyone[peer]
                theirs = theirs[(theirs[:, 2] == self.rank) & (theirs[:, 3] == -direction)]
                if len(ours) != len(theirs):
                    raise RuntimeError(f"rank {self.rank} and rank {peer}: {len(ours)} messages "
                                       f"against {len(theirs)} matching ones")
                start = np.maximum(ours[:, 0], theirs[:, 0])  # both have entered
                wait += float(np.sum(np.minimum(start, ours[:, 1]) - ours[:, 0]))
                transfer += float(np.sum(np.maximum(0.0, ours[:, 1] - start)))
        return transfer, wait

    def _collective_split(self) -> tuple[float, float]:
        if self.size == 1:
            return 0.0, 0.0
        counts = self.comm.allgather(self.calls)
        if len(set(counts)) != 1:
            raise RuntimeError(f"ranks ran different numbers of collectives: {counts}")
        entered = self._times[:self.calls, 0] + self.clock_offset
        last = np.empty_like(entered)
        self.comm.Allreduce(entered, last, op=MPI.MAX)
        left = self._times[:self.calls, 1] + self.clock_offset
        wait = float(np.sum(last - entered))
        transfer = float(np.sum(np.maximum(0.0, left - last)))
        return transfer, wait

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

    def send(self, buf: np.ndarray, dest: int) -> None:
        """Send `buf` to rank `dest` (blocking; the receiver posts a matching recv)."""
        t0 = MPI.Wtime()
        self.comm.Send(buf, dest=dest, tag=11)
        self._account_p2p(t0, buf.nbytes, dest, 1)

    def recv(self, buf: np.ndarray, source: int) -> None:
        """Receive into `buf` from rank `source`."""
        t0 = MPI.Wtime()
        self.comm.Recv(buf, source=source, tag=11)
        self._account_p2p(t0, 0, source, -1)

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def max(self, value: float) -> float:
        """The largest of one float over ranks (control-sized message)."""
        return value if self.size == 1 else self.comm.allreduce(value, op=MPI.MAX)
