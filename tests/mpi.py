"""Run the engine's command lines under mpiexec from tests (a hung job fails its test by timeout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mpiexec() -> str:
    """The mpiexec next to this Python (the PyPI mpich wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("mpiexec not found: install the project (pip install -e .) for the mpich wheel")
    return found


def run_mpi(nranks: int, module_args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """mpiexec -n P python -m mpi4py <module_args>, from the repository root, text output."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [mpiexec(), "-n", str(nranks), sys.executable, "-m", "mpi4py", *module_args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
