"""Qwen3 inference in parallel on CPUs: loader, reference model, MPI engine, bench, report.

Importing ext first configures the thread pools (see ext/__init__.py), before numpy loads
OpenBLAS and before libgomp loads: both read their settings once, at load time.
"""

import ext  # noqa: F401  (for its side effect: thread-pool settings in the environment)
