"""Facts about the machine and the MPI library that every measurement records beside its numbers."""

from __future__ import annotations

import datetime
import os
import platform
import socket
from pathlib import Path

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


def topology() -> dict:
    """Sockets, NUMA nodes and cores of this machine, from /sys (empty lists where it is not Linux)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    sys_cpu, packages, cores = Path("/sys/devices/system/cpu"), set(), set()
    for cpu in range(os.cpu_count() or 0):
        top = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = int((top / "physical_package_id").read_text())
            packages.add(package)
            cores.add((package, int((top / "core_id").read_text())))
        except (OSError, ValueError):
            continue
    numa = sorted(int(d.name[4:]) for d in Path("/sys/devices/system/node").glob("node[0-9]*"))
    return {"sockets": len(packages), "numa_nodes": len(numa) or 1, "physical_cores": len(cores),
            "logical_cpus": os.cpu_count() or 1, "allowed_cpus": cpus}


def placement() -> dict:
    """Where this rank may run: its host, the CPUs of its affinity mask and the OpenMP binding asked."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    env = os.environ
    return {"host": socket.gethostname(), "cpus": allowed,
            "omp_places": env.get("OMP_PLACES", ""), "omp_proc_bind": env.get("OMP_PROC_BIND", "")}


def shared_cpus(placements: list[dict]) -> list[list[int]]:
    """Groups of ranks (by index) whose affinity masks overlap on the same host: they share cores."""
    groups = []
    for i, a in enumerate(placements):
        for j in range(i + 1, len(placements)):
            b = placements[j]
            if a["host"] == b["host"] and set(a["cpus"]) & set(b["cpus"]):
                groups.append([i, j])
    return groups
