"""Run the engine's command lines under mpiexec from tests (a hung job fails its test by timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.study.cluster import find_mpiexec  # the PyPI mpich's mpiexec, else PATH's

REPO = Path(__file__).resolve().parents[1]


def run_mpi(nranks: int, module_args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """mpiexec -n P python -m mpi4py <module_args>, from the repository root, text output."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [find_mpiexec(), "-n", str(nranks), sys.executable, "-m", "mpi4py", *module_args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def generate(export, layout: str, algo: str, nranks: int, prompt: list[int], new_tokens: int,
             logits_file: Path, *extra: str) -> tuple[list[int], np.ndarray]:
    """`python -m pipeline generate` of one cell under mpiexec: its greedy tokens and every step's
    logits (float32, (new_tokens, vocab))."""
    proc = run_mpi(nranks, ["-m", "pipeline", "generate", "--export", str(export), *extra,
                            "--parallel-strategy", layout, "--attention-algo", algo,
                            "--prompt-ids", ",".join(map(str, prompt)),
                            "--max-new-tokens", str(new_tokens), "--logits-out", str(logits_file)])
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("generated ids:"))
    return [int(t) for t in line.split(":", 1)[1].split(",")], np.load(logits_file)
