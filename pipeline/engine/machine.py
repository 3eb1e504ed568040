"""Facts about the machine and the MPI library that every measurement records beside its numbers."""

from __future__ import annotations

import datetime
import os
import platform
import socket

import numpy as np

from ext.ops import vector_lanes


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(nranks: int, threads_per_rank: int) -> dict:
    """CPU, cores, oversubscription, host, versions and time; MPI facts when mpi4py is loaded."""
    cores = os.cpu_count() or 1
    facts = {"cpu_model": cpu_model(), "cores": cores, "nranks": nranks,
             "threads_per_rank": threads_per_rank, "oversubscribed": nranks * threads_per_rank > cores,
             "hostname": socket.gethostname(), "python": platform.python_version(),
             "numpy": np.__version__, "simd_lanes": vector_lanes(),
             "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    try:
        from mpi4py import MPI

        facts["mpi_library"] = MPI.Get_library_version().splitlines()[0].strip()
        facts["mpi_version"] = "{}.{}".format(*MPI.Get_version())
    except ImportError:
        pass
    return facts
