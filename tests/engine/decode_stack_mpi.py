"""Under mpiexec: the fused decode step with its reduce hook is the per-op path, bit for bit.

usage: python -m mpi4py tests/engine/decode_stack_mpi.py EXPORT LAYOUT; prints "identical" on
rank 0 when every rank's logits of both paths are equal ("no stack" for a sequence layout, whose
decode merges attention across ranks and so runs op by op).
"""

import sys

import numpy as np
from mpi4py import MPI

import pipeline  # noqa: F401  (ext's thread settings before numpy's BLAS loads)
from model_export.reader import open_export
from pipeline.engine.comm import Comm
from pipeline.engine.model import Qwen3Engine

comm = Comm()
export, layout = open_export(sys.argv[1]), sys.argv[2]
prompt = np.arange(20) * 7 % 200
runs = []
for fused in (True, False):
    engine = Qwen3Engine(export, layout, "online_softmax", comm, 1, max_seq=40, micro_batch=8)
    if layout.startswith("sequence"):  # a sequence level of several ranks merges attention: no stack
        assert not engine.strategy.positional_cache and engine.decode_stack is None
        if comm.rank == 0:
            print("no stack")
        sys.exit(0)
    assert engine.decode_stack is not None
    if not fused:
        engine.decode_stack = None
    runs.append(engine.generate(prompt, 12, keep_logits=True)[1])
same = comm.comm.allreduce(int(np.array_equal(runs[0], runs[1])), op=MPI.MIN)
if comm.rank == 0:
    print("identical" if same else f"differ: {np.abs(runs[0] - runs[1]).max()}")
