"""Where ranks and their OpenMP threads run: the binding chosen for a job, and the launcher that
applies it.

    python -m pipeline launch [--bind auto|core|numa|none] [--mpiexec mpiexec] -n P COMMAND...

`choose(topology, P, threads_per_rank, policy)` decides, from the machine's topology
(pipeline.engine.machine.topology: NUMA nodes with their CPUs, physical cores):

- `none`, or a job that oversubscribes the cores (P x threads > physical cores): no binding;
  pinning two ranks to one core would be worse than letting the scheduler move them.
- `numa`, or `auto` on a machine with several NUMA nodes: one rank per NUMA node (P a multiple
  of the NUMA node count: P / N ranks per node, each on its own cores of that node), so a rank's
  weights and KV cache, first touched by its threads, stay in its node's memory.
- `core`: each rank on `threads_per_rank` cores of its own, packed in order.
- `auto` on one NUMA node: `core` for ranks of several threads (their OpenMP team then stays
  on its cores), unbound for ranks of one thread (no gain measured: docs/design-notes.md#binding).

Binding is applied by Hydra (`-bind-to user:CPUS,...`, rank by rank), and the threads of each rank follow with
`OMP_PLACES=cores OMP_PROC_BIND=close`; QWEN3_BINDING names the decision, so each rank's
placement record (machine.placement) says what was asked beside the CPUs it got. Hydra binds
per host: on emulated nodes (namespaces of one machine) every node would put its first rank on
the same core, so the emulated cluster's launcher does not bind.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field

POLICIES = ("auto", "core", "numa", "none")
AUTO_MIN_THREADS = 2  # auto binds ranks of this many threads or more (docs/design-notes.md#binding)


@dataclass(frozen=True)
class Binding:
    policy: str  # what was applied: "core", "numa" or "none"
    reason: str
    mpiexec_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    rank_cpus: list[list[int]] = field(default_factory=list)  # the CPUs each rank gets (empty: unbound)


def _cores(topo: dict) -> list[list[int]]:
    """Physical cores as lists of their logical CPUs, in CPU order (one CPU per core without SMT)."""
    return topo.get("cores") or [[c] for c in topo.get("allowed_cpus", [])]


def _numa(topo: dict) -> list[list[int]]:
    return topo.get("numa") or [sorted(c for core in _cores(topo) for c in core)]


def _packed(cores: list[list[int]], nranks: int, per_rank: int) -> list[list[int]]:
    return [sorted(c for core in cores[r * per_rank:(r + 1) * per_rank] for c in core) for r in range(nranks)]


def user_list(cpus: list[list[int]]) -> str:
    """Hydra's explicit binding: `user:0+1,2+3` puts rank 0 on CPUs 0 and 1, rank 1 on 2 and 3."""
    return "user:" + ",".join("+".join(map(str, c)) for c in cpus)


def _unbound(reason: str) -> Binding:
    return Binding("none", reason, env={"QWEN3_BINDING": "none"})


def _bound(policy: str, reason: str, args: list[str], cpus: list[list[int]]) -> Binding:
    env = {"OMP_PLACES": "cores", "OMP_PROC_BIND": "close", "QWEN3_BINDING": policy}
    return Binding(policy, reason, args, env, cpus)


def choose(topo: dict, nranks: int, threads_per_rank: int, policy: str = "auto") -> Binding:
    """The binding of P ranks of `threads_per_rank` threads each on this topology."""
    if policy not in POLICIES:
        raise ValueError(f"binding policy {policy!r}: choose from {list(POLICIES)}")
    cores, numa = _cores(topo), _numa(topo)
    if policy == "none":
        return _unbound("binding off (policy none)")
    if nranks * threads_per_rank > len(cores):
        return _unbound(f"{nranks} ranks x {threads_per_rank} threads > {len(cores)} cores: not bound")
    if policy == "numa" or (policy == "auto" and len(numa) > 1):
        if nranks % len(numa) == 0:
            per_node = nranks // len(numa)
            cpus = []
            for node in numa:
                node_cores = [core for core in cores if core[0] in node]
                cpus += _packed(node_cores, per_node, len(node_cores) // per_node)
            # The CPUs listed rank by rank (Hydra's user binding): block `core:N` binding would
            # straddle NUMA nodes where the kernel numbers CPUs alternately across sockets.
            return _bound("numa", f"{per_node} rank(s) per NUMA node ({len(numa)} nodes)",
                          ["-bind-to", user_list(cpus)], cpus)
        if policy == "numa" or threads_per_rank < AUTO_MIN_THREADS:
            return _unbound(f"{nranks} ranks are not a multiple of {len(numa)} NUMA nodes: not bound")
    if policy == "core" or (policy == "auto" and threads_per_rank >= AUTO_MIN_THREADS):
        cpus = _packed(cores, nranks, threads_per_rank)
        return _bound("core", f"each rank on {threads_per_rank} core(s) of its own",
                      ["-bind-to", user_list(cpus)], cpus)
    return _unbound("one thread per rank on one NUMA node: not bound by default (no gain measured)")


def threads_of(argv: list[str], nranks: int, cores: int) -> int:
    """Threads per rank of the command: its `--threads` (the job's total) over P, as bench does."""
    total = int(argv[argv.index("--threads") + 1]) if "--threads" in argv[:-1] else cores
    return max(1, total // nranks)


def command(argv: list[str], policy: str, mpiexec: str, topo: dict) -> tuple[list[str], Binding]:
    """mpiexec with the binding's options before `-n P COMMAND...`, and the binding."""
    if "-n" not in argv[:-1]:
        raise ValueError("launch needs -n P before the command")
    nranks = int(argv[argv.index("-n") + 1])
    binding = choose(topo, nranks, threads_of(argv, nranks, len(_cores(topo)) or 1), policy)
    genv = [x for k, v in binding.env.items() for x in ("-genv", k, v)]
    return [*shlex.split(mpiexec), *binding.mpiexec_args, *genv, *argv], binding


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    policy, mpiexec = "auto", "mpiexec"
    while argv and argv[0] in ("--bind", "--mpiexec"):
        if len(argv) < 2:
            print(f"error: {argv[0]} needs a value", file=sys.stderr)
            return 2
        if argv[0] == "--bind":
            policy = argv[1]
        else:
            mpiexec = argv[1]
        argv = argv[2:]
    from pipeline.engine.machine import topology

    try:
        cmd, binding = command(argv, policy, mpiexec, topology())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"launch: binding {binding.policy}: {binding.reason}", file=sys.stderr, flush=True)
    os.execvp(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
