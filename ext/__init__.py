"""Cython/OpenMP kernels: attention, linear (GEMV/GEMM), mlp, ops.

All the kernels' threads are one OpenMP pool: even BLAS's sgemm runs single-threaded on our
OpenMP threads (ext/linear.pyx), so no second pool takes turns with it. Then idle OpenMP threads
should spin a little between parallel regions rather than sleep: a decode step runs about four
regions per layer, and waking a sleeping thread cost 15-200 us on these 2-vCPU VMs (an idle
vCPU halts, and waking it goes through the hypervisor). Measured with python -m pipeline.study.bench,
synthetic Qwen3-0.6B, 1 rank x 2 threads, two runs back to back (noisy VM): decode 13.9 tok/s
(float32) and 22.6 (bf16) with threads sleeping at once (OMP_WAIT_POLICY=PASSIVE), 19.4 and 34.9
with GOMP_SPINCOUNT=100000 (about 1 ms of spinning), prefill unchanged (214 and 209 tok/s).
The spin is read once, when libgomp loads (the first ext module), so it is set here;
GOMP_SPINCOUNT for GCC's libgomp, KMP_BLOCKTIME (ms) for LLVM's libomp. An explicit
OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME in the environment wins.

OPENBLAS_THREAD_TIMEOUT=22 (2^22 cycles, about 1.6 ms, instead of about 0.1 s) matters only where
numpy's matmul runs with OpenBLAS's own threads (the roofline's ceilings, and the fallback when
sgemm cannot be found): OpenBLAS threads then stop spinning soon after a call. numpy reads it when
it loads OpenBLAS, so entry points import pipeline (which sets it) before numpy.
"""

import os

if not any(v in os.environ for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
    os.environ["GOMP_SPINCOUNT"] = "100000"
    os.environ["KMP_BLOCKTIME"] = "1"
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")
