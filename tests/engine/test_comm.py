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
