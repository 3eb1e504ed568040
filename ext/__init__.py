"""Cython/OpenMP kernels: attention, mlp, ops.

libgomp reads OMP_WAIT_POLICY once, when it is loaded by the first of these extension modules.
Its default lets idle OpenMP threads spin after a prange region, stealing the cores that OpenBLAS
needs next (a GEMM measured 185 GFLOP/s alone fell to about 55 right after a prange call), so
idle threads sleep instead. Set it explicitly before importing ext to override.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
