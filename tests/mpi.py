"""Run the engine's command lines under mpiexec from tests (a hung job fails its test by timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.study.cluster import find_mpiexec  # the PyPI mpich's mpiexec, else PATH's

REPO = Path(__file__).resolve().parents[1]


def run_mpi(nranks: int, module_args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """mpiexec -n P python -m mpi4py <module_args>, from the repository root, text output."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [find_mpiexec(), "-n", str(nranks), sys.executable, "-m", "mpi4py", *module_args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
