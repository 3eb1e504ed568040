"""Under mpiexec -n 2: bench.weights_read_in_order over a two-stage layer layout whose reads sleep
(stage s's layers 0.15 + 0.1 s, the head 0.05 s); rank 0 prints the seconds it returned."""

import time
from types import SimpleNamespace

import pipeline  # noqa: F401  (ext's thread settings before numpy's BLAS loads)
from pipeline.engine.comm import Comm
from pipeline.engine.strategies.base import Comms
from pipeline.study.bench import weights_read_in_order

comm = Comm()
comms = Comms.of_layout(comm, "layer")
stage = comms.stages.rank


def read_weights(part: str) -> int:
    time.sleep({"layers": 0.15 + 0.1 * stage, "head": 0.05}[part])
    return 0


engine = SimpleNamespace(strategy=SimpleNamespace(comms=comms), read_weights=read_weights)
seconds = weights_read_in_order(engine, comm)
if comm.rank == 0:
    print(f"in order {seconds:.4f}")
