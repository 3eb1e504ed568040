"""Cython/OpenMP kernels: attention, linear (GEMV/GEMM), mlp, ops, decode (a decode step's layers
in one call), hugepages (private weight copies in 2 MiB pages). Arrays in, arrays out: nothing
here imports the rest of the project.

All the kernels' threads are one OpenMP pool: even BLAS's sgemm runs single-threaded on our
OpenMP threads (ext/linear.pyx), so no second pool takes turns with it on the cores
(docs/design-notes.md#one-pool). Importing ext sets two thread waits in the environment; each
library reads its own once, when it loads, and an explicit value in the environment wins:
- GOMP_SPINCOUNT=100000 (about 1 ms; KMP_BLOCKTIME=1, in ms, for LLVM's libomp): idle OpenMP
  threads spin a little between parallel regions rather than sleep: a decode step runs about
  four regions per layer, and waking sleeping threads for each made decode 28-35% slower
  (docs/design-notes.md#spin). libgomp loads with the first ext module, so it is set here; not
  set when OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME already is.
- OPENBLAS_THREAD_TIMEOUT=22 (2^22 cycles, about 1.6 ms, instead of about 0.1 s): where numpy's
  matmul runs with OpenBLAS's own threads (the roofline's ceilings, and the fallback when sgemm
  cannot be found), they stop spinning soon after a call (docs/design-notes.md#openblas-timeout).
  numpy reads it when it loads OpenBLAS, so entry points import pipeline (which imports ext)
  before numpy.
"""

import os

if not any(v in os.environ for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
    os.environ["GOMP_SPINCOUNT"] = "100000"
    os.environ["KMP_BLOCKTIME"] = "1"
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")
