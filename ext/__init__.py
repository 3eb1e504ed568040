"""Cython/OpenMP kernels: attention, mlp, ops.

Two thread runtimes share the cores: libgomp (the prange kernels here) and numpy's OpenBLAS
(pthreads). Each one's idle threads spin for a while after a parallel region, on the cores the
other one needs next. Both waits are set from the environment, which each library reads once,
when it loads; so set them before libgomp loads (the first ext module) and, for OpenBLAS,
before numpy is first imported (entry points: import ext first). Measured on 2 cores
(python -m pipeline.kernels_bench):
- OMP_WAIT_POLICY=PASSIVE: libgomp's threads sleep at once. Without it a GEMM measured
  185 GFLOP/s alone fell to about 55 right after a prange call.
- OPENBLAS_THREAD_TIMEOUT=22 (2^22 cycles, about 1.6 ms, instead of 2^28, about 0.1 s): a
  prange kernel right after a GEMM otherwise runs at one core's speed (attention T=S=1024:
  35 ms instead of 17.5), while decode's back-to-back GEMVs still find BLAS threads awake
  (timeout 4, sleeping at once, made a decode layer about 20% slower).
Set either explicitly to override.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")
