"""The collectives' books: waiting for the slowest rank is told apart from transfer."""

from __future__ import annotations

import json

from tests.mpi import run_mpi

SKEWED = """
import json, sys, time
import numpy as np
from pipeline.engine.comm import Comm
comm = Comm()
buf = np.ones(1024, np.float32)
comm.reset_counters()
for late in (0.0, 0.15, 0.0):       # rank 1 arrives 150 ms late at the second collective
    if comm.rank == 1:
        time.sleep(late)
    comm.allreduce_sum(buf)
transfer, wait = comm.arrival_split()
books = comm.comm.gather({"rank": comm.rank, "transfer": transfer, "wait": wait, "calls": comm.calls})
if comm.rank == 0:
    print(json.dumps(books))  # one line from one rank: the ranks' prints would interleave
"""


def test_a_late_rank_shows_as_waiting_on_the_others(tmp_path):
    script = tmp_path / "skewed.py"
    script.write_text(SKEWED)
    proc = run_mpi(2, [str(script)])
    assert proc.returncode == 0, proc.stderr
    books = {b["rank"]: b for b in json.loads(proc.stdout)}
    assert books[0]["calls"] == books[1]["calls"] == 3
    assert 0.14 <= books[0]["wait"] <= 0.5  # rank 0 waited for rank 1's 150 ms
    assert books[1]["wait"] < 0.05  # the late rank did not wait
    assert books[0]["transfer"] < 0.05 and books[1]["transfer"] < 0.05  # 4 KB: microseconds


MANY = """
import json
import numpy as np
from pipeline.engine.comm import Comm
comm = Comm()
from mpi4py import MPI
buf = np.ones(1, np.float32)
t0 = MPI.Wtime()
for _ in range(5000):  # past the books' first capacity: they grow, none is lost
    comm.allreduce_sum(buf)
elapsed = MPI.Wtime() - t0
transfer, wait = comm.arrival_split()
if comm.rank == 0:
    print(json.dumps({"calls": comm.calls, "transfer": transfer, "wait": wait, "elapsed": elapsed}))
"""


def test_the_books_keep_every_collective_past_their_first_capacity(tmp_path):
    script = tmp_path / "many.py"
    script.write_text(MANY)
    proc = run_mpi(2, [str(script)])
    assert proc.returncode == 0, proc.stderr
    books = json.loads(proc.stdout)
    assert books["calls"] == 5000
    # every call counted, and no more time than the loop took (a loaded machine makes it long)
    assert 0 < books["transfer"] + books["wait"] <= books["elapsed"]


PIPELINE = """
import json, time
import numpy as np
from pipeline.engine.comm import Comm
comm = Comm()
buf = np.ones(1 << 16, np.float32)  # 256 KB: past MPICH's eager limit, a rendezvous
comm.reset_counters()
for late in (0.0, 0.2):             # the second message: rank 0 sends 200 ms late
    if comm.rank == 0:
        time.sleep(late)
        comm.send(buf, 1)
    else:
        comm.recv(buf, 0)
transfer, wait = comm.arrival_split()
books = comm.comm.gather({"rank": comm.rank, "transfer": transfer, "wait": wait,
                          "messages": comm.messages, "bytes": comm.bytes_sent})
if comm.rank == 0:
    print(json.dumps(books))
"""


def test_a_receiver_waiting_for_a_late_sender_shows_as_waiting(tmp_path):
    script = tmp_path / "stages.py"  # not pipeline.py: it would shadow the package
    script.write_text(PIPELINE)
    proc = run_mpi(2, [str(script)])
    assert proc.returncode == 0, proc.stderr
    books = {b["rank"]: b for b in json.loads(proc.stdout)}
    assert books[0]["messages"] == books[1]["messages"] == 2
    assert books[0]["bytes"] == 2 * 4 * (1 << 16) and books[1]["bytes"] == 0  # the sender's books
    assert 0.19 <= books[1]["wait"] <= 0.6  # the receiver waited for the late send
    assert books[0]["wait"] < 0.05  # the receiver was there first: the sender did not wait
    assert books[1]["transfer"] < 0.1 and books[0]["transfer"] < 0.1  # 256 KB in shared memory


SPLIT = """
import json
import numpy as np
from pipeline.engine.comm import Comm
comm = Comm()
child = comm.split(comm.rank // 2, comm.rank % 2)  # two pairs
buf = np.full(4, comm.rank + 1.0, np.float32)
comm.reset_counters()
child.allreduce_sum(buf)
comm.allreduce_sum(buf)
transfer, wait = comm.arrival_split()
books = comm.comm.gather({"rank": comm.rank, "sum": buf.tolist(), "calls": [comm.calls, child.calls],
                          "bytes": comm.bytes_sent, "seconds": comm.seconds, "split": transfer + wait})
if comm.rank == 0:
    print(json.dumps(books))
"""


def test_a_parents_books_include_its_sub_communicators(tmp_path):
    script = tmp_path / "split.py"
    script.write_text(SPLIT)
    proc = run_mpi(4, [str(script)])
    assert proc.returncode == 0, proc.stderr
    books = json.loads(proc.stdout)
    # pairs (1+2) and (3+4), then all four of 3, 3, 7, 7: 20 on every rank
    assert all(b["sum"] == [20.0] * 4 for b in books)
    assert all(b["calls"] == [1, 1] for b in books)
    # ring Allreduce: 2 (P-1)/P of 16 bytes on the pair (16) and on all four (24)
    assert all(b["bytes"] == 16 + 24 for b in books)
    assert all(0 < b["split"] <= b["seconds"] * 1.001 + 1e-6 for b in books)
