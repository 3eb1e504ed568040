"""Qwen3 inference in parallel on CPUs: loader, reference model, MPI engine, bench, report.

Thread pools are configured here, before numpy loads OpenBLAS and before ext/ loads libgomp
(both read these once, at load time); explicit settings in the environment win:
- OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep after a prange region instead of spinning
  on the cores BLAS needs next (a GEMM fell from ~200 to ~100 GFLOP/s right after a prange).
- OPENBLAS_THREAD_TIMEOUT=22: OpenBLAS threads spin ~1.6 ms after a call instead of ~0.1 s,
  which otherwise halved the prange kernel that follows a GEMM.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")
