"""A job in which rank 1 raises in the middle of the forward (run under python -m mpi4py).

The test expects the whole job to end with rank 1's error, not to hang in a collective.
"""

import sys

import numpy as np

from model_export.reader import open_export
from pipeline.engine.comm import Comm
from pipeline.engine.model import Qwen3Engine

comm = Comm()
engine = Qwen3Engine(open_export(sys.argv[1]), sys.argv[2], "online_softmax", comm, 1, max_seq=32)
if comm.rank == 1:
    def broken_block(*args, **kwargs):
        raise RuntimeError("injected failure on rank 1")
    engine._block = broken_block
engine.generate(np.arange(8), 4)
