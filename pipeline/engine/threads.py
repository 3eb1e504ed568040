"""One way to set the threads of the process: BLAS through threadpoolctl, OpenMP per call.

- OpenMP (the ext/ kernels): every kernel takes `num_threads` explicitly; pass the same n.
  OMP_NUM_THREADS is not relied upon (Snakemake sets it to the rule's threads, 1 by default).
- BLAS (numpy's OpenBLAS): ext.linear calls its sgemm from the OpenMP threads, one thread each,
  so `set_threads(n)` limits BLAS's own pool to 1 thread with threadpoolctl (n where that sgemm
  cannot be found and numpy.matmul does the GEMMs); the limit stays for the life of the process.
- `import ext` sets how long idle OpenMP threads spin before sleeping (see ext/__init__.py).
"""

from __future__ import annotations

from threadpoolctl import threadpool_info, threadpool_limits

_limits = None  # the active threadpoolctl limiter, kept so it is not garbage collected


def set_threads(n: int) -> int:
    """Set the process up for n threads; returns n for the kernels' num_threads.

    When ext.linear runs BLAS's sgemm on its own OpenMP threads (gemm_in_openmp()), BLAS's
    pool is limited to 1 thread: n OpenMP threads each call a single-threaded sgemm. Otherwise
    BLAS gets the n threads itself.
    """
    global _limits
    from ext.linear import gemm_in_openmp

    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _limits = threadpool_limits(limits=1 if gemm_in_openmp() else n, user_api="blas")
    return n


def blas_info() -> dict:
    """Which sgemm ext.linear bound (None: numpy.matmul does the GEMMs) and the BLAS libraries loaded
    in the process with their thread counts, as set_threads left them (for the bench record)."""
    from ext.linear import sgemm_source

    libraries = [
        {k: info.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer", "filepath")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return {"sgemm": sgemm_source(), "libraries": libraries}
