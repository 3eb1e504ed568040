"""One way to set the threads of the process: BLAS through threadpoolctl, OpenMP per call.

- BLAS (numpy's OpenBLAS, the one BLAS the engine uses): `set_threads(n)` limits it with
  threadpoolctl; the limit stays for the life of the process (or until the next call).
- OpenMP (the ext/ kernels): every kernel takes `num_threads` explicitly; pass the same n.
  OMP_NUM_THREADS is not relied upon (Snakemake sets it to the rule's threads, 1 by default).
- `import ext` sets OMP_WAIT_POLICY=PASSIVE before libgomp loads, so idle OpenMP threads sleep
  instead of spinning on the cores BLAS needs next (see ext/__init__.py).
"""

from __future__ import annotations

from threadpoolctl import threadpool_info, threadpool_limits

_limits = None  # the active threadpoolctl limiter, kept so it is not garbage collected


def set_threads(n: int) -> int:
    """Limit BLAS to n threads for the rest of the process; returns n for the kernels' num_threads."""
    global _limits
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _limits = threadpool_limits(limits=n, user_api="blas")
    return n


def blas_info() -> list[dict]:
    """The BLAS libraries loaded in the process, with their thread counts (for the bench record)."""
    return [
        {k: info.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer", "filepath")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
