"""Facts about the machine and the MPI library that every measurement records beside its numbers."""

from __future__ import annotations

import datetime
import os
import platform
import socket
from pathlib import Path

import numpy as np

from ext.ops import vector_lanes
from model_export.reader import map_file


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


def cpu_list(text: str) -> list[int]:
    """A kernel CPU list ("0-3,8,10-11") as CPU numbers."""
    out: list[int] = []
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out += range(int(lo), int(hi or lo) + 1)
    return out


def topology(root: str | Path = "/sys/devices/system") -> dict:
    """Sockets, NUMA nodes and physical cores of this machine, from /sys (`root` for tests).

    `cores` lists each physical core's logical CPUs (SMT siblings together), `numa` each NUMA
    node's CPUs; both empty where /sys does not say (not Linux).
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    sys_cpu, packages, cores = Path(root) / "cpu", set(), {}
    for d in sorted(sys_cpu.glob("cpu[0-9]*"), key=lambda d: int(d.name[3:])):
        top = d / "topology"
        try:
            package = int((top / "physical_package_id").read_text())
            packages.add(package)
            cores.setdefault((package, int((top / "core_id").read_text())), []).append(int(d.name[3:]))
        except (OSError, ValueError):
            continue
    numa = []
    for d in sorted(Path(root).glob("node/node[0-9]*"), key=lambda d: int(d.name[4:])):
        try:
            numa.append(cpu_list((d / "cpulist").read_text()))
        except (OSError, ValueError):
            continue
    return {"sockets": len(packages), "numa_nodes": len(numa) or 1, "physical_cores": len(cores),
            "logical_cpus": sum(len(c) for c in cores.values()) or os.cpu_count() or 1,
            "allowed_cpus": cpus, "cores": sorted(cores.values()), "numa": numa}


def boot_id() -> str:
    """This kernel's boot id: the same in every network namespace of one machine, so emulated
    nodes (namespaces with hostnames of their own) are recognised as one physical machine."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def thread_cpus() -> list[list[int]]:
    """The affinity mask of each thread of this process (its OpenMP threads once they exist)."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    masks = set()
    for task in Path("/proc/self/task").glob("[0-9]*"):
        try:
            masks.add(tuple(sorted(os.sched_getaffinity(int(task.name)))))
        except OSError:  # a thread that ended meanwhile
            continue
    return sorted(list(m) for m in masks) or [sorted(os.sched_getaffinity(0))]


def placement() -> dict:
    """Where this rank may run: its host, machine (boot id), the CPUs its threads may use (with
    OMP_PROC_BIND the main thread alone holds only the first place, so the union over threads),
    each distinct thread mask, the binding asked for (pipeline.engine.binding) and OpenMP's."""
    threads = thread_cpus()
    env = os.environ
    return {"host": socket.gethostname(), "machine": boot_id(),
            "cpus": sorted({c for mask in threads for c in mask}), "thread_cpus": threads,
            "binding": env.get("QWEN3_BINDING", ""),
            "omp_places": env.get("OMP_PLACES", ""), "omp_proc_bind": env.get("OMP_PROC_BIND", "")}


def shared_cpus(placements: list[dict]) -> list[list[int]]:
    """Pairs of ranks (by index) whose affinity masks overlap on one physical machine: they share
    cores. Ranks on different emulated nodes of one machine (same boot id) count as one machine."""
    def machine(p: dict) -> str:
        return p.get("machine") or p["host"]

    groups = []
    for i, a in enumerate(placements):
        for j in range(i + 1, len(placements)):
            b = placements[j]
            if machine(a) == machine(b) and set(a["cpus"]) & set(b["cpus"]):
                groups.append([i, j])
    return groups


def huge_page_share(under: str | Path, smaps: str | Path = "/proc/self/smaps") -> float | None:
    """Share of this process's resident file pages under `under` (an export directory, or a GGUF
    file) that are mapped as 2 MiB pages, from /proc/self/smaps; None where there is no smaps or
    nothing under `under` is resident. A GEMV probe read weights through a file map ~5% faster in
    2 MiB pages (docs/design-notes.md#huge-folios), so every measurement records it, ours and
    llama.cpp's."""
    path, rss, huge, inside = str(Path(under).absolute()), 0, 0, False
    folder = path.rstrip("/") + "/"
    try:
        with open(smaps) as f:
            for line in f:
                head = line.split(maxsplit=5)
                if "-" in head[0] and ":" not in head[0]:  # a mapping's first line
                    name = head[5].rstrip("\n") if len(head) > 5 else ""
                    inside = name == path or name.startswith(folder)  # not "<path>-old/..."
                elif inside and head[0] == "Rss:":
                    rss += int(head[1])
                elif inside and head[0] == "FilePmdMapped:":
                    huge += int(head[1])
    except OSError:
        return None
    return huge / rss if rss else None


# Below this share of 2 MiB pages, weights are dropped from the page cache and read in again.
REFOLD_BELOW = 0.9


def fold_into_huge_pages(files: list[Path], under: str | Path) -> tuple[float | None, float | None]:
    """Fault `files` (the weights under `under`) into the page cache through maps advised for
    2 MiB pages; where less than REFOLD_BELOW of them land in 2 MiB pages (the cache kept small
    folios from a plain read or write, which no advice changes), drop them from the cache and read
    them again the same way. Returns the share (before, after): after is before where nothing was
    dropped. Call it where no other process maps the files, before this one maps them
    (docs/design-notes.md#huge-folios)."""
    before = _touch_share(files, under)
    if before is None or before >= REFOLD_BELOW or not hasattr(os, "posix_fadvise"):
        return before, before
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)  # the cache keeps dirty pages: a file written moments ago is not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return before, _touch_share(files, under)


def _touch_share(files: list[Path], under: str | Path) -> float | None:
    """Read one byte per 4 KiB page of each file through the reader's advised map; the share of
    them in 2 MiB pages while mapped. The maps are closed on return."""
    maps = [map_file(Path(f)) for f in files]
    for m in maps:
        if m.size:
            m[::4096].max()
    return huge_page_share(under)
