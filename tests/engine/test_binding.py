"""Binding of ranks and threads on faked topologies, the topology read from a faked /sys, and the
shared-core record across emulated nodes of one machine."""

from __future__ import annotations

import pytest

from pipeline.engine import binding, machine


def topo(numa: list[list[int]], smt: int = 1) -> dict:
    """A topology as machine.topology() returns it: cores of `smt` consecutive CPUs per node list."""
    cores = [node[i:i + smt] for node in numa for i in range(0, len(node), smt)]
    return {"numa_nodes": len(numa), "numa": numa, "cores": sorted(cores), "physical_cores": len(cores),
            "allowed_cpus": sorted(c for n in numa for c in n)}


TWO_NUMA = topo([[0, 1, 2, 3], [4, 5, 6, 7]])
INTERLEAVED = topo([[0, 2, 4, 6], [1, 3, 5, 7]])  # CPUs numbered alternately across sockets
ONE_NUMA = topo([[0, 1]])


def node_of(cpu: int, t: dict) -> int:
    return next(i for i, n in enumerate(t["numa"]) if cpu in n)


@pytest.mark.parametrize("t", [TWO_NUMA, INTERLEAVED], ids=["blocked", "interleaved"])
@pytest.mark.parametrize("P", [2, 4])
def test_one_rank_per_numa_node_by_default(t, P):
    b = binding.choose(t, P, 8 // P)
    assert b.policy == "numa"
    nodes = [{node_of(c, t) for c in cpus} for cpus in b.rank_cpus]
    assert all(len(n) == 1 for n in nodes)  # no rank straddles two NUMA nodes
    assert [next(iter(n)) for n in nodes] == sorted(next(iter(n)) for n in nodes)  # ranks in node order
    assert sorted(c for cpus in b.rank_cpus for c in cpus) == list(range(8))  # every CPU, once
    assert b.mpiexec_args == ["-bind-to", binding.user_list(b.rank_cpus)]
    assert b.env["OMP_PLACES"] == "cores" and b.env["OMP_PROC_BIND"] == "close"


def test_user_list_syntax():
    assert binding.user_list([[0, 1], [2, 3]]) == "user:0+1,2+3"


def test_core_policy_packs_ranks_and_keeps_smt_siblings_together():
    t = topo([[0, 1, 2, 3, 4, 5, 6, 7]], smt=2)  # 4 cores of 2 hyperthreads
    b = binding.choose(t, 2, 2, "core")
    assert b.rank_cpus == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("policy", ["auto", "core", "numa"])
def test_oversubscribed_jobs_are_never_bound(policy):
    b = binding.choose(ONE_NUMA, 4, 1, policy)
    assert b.policy == "none" and not b.mpiexec_args and "4 ranks x 1 threads" in b.reason


def test_single_numa_default_and_uneven_numa():
    assert binding.choose(ONE_NUMA, 2, 1).policy == "none"  # one thread per rank: left alone
    team = binding.choose(ONE_NUMA, 1, 2)  # an OpenMP team: each thread on a core of the rank's
    assert team.policy == "core" and team.rank_cpus == [[0, 1]] and team.env["OMP_PROC_BIND"] == "close"
    b = binding.choose(TWO_NUMA, 3, 1)
    assert b.policy == "none" and "not a multiple of 2 NUMA nodes" in b.reason
    assert binding.choose(TWO_NUMA, 3, 2).policy == "core"  # teams still get cores of their own
    with pytest.raises(ValueError, match="binding policy 'tight'"):
        binding.choose(ONE_NUMA, 1, 1, "tight")


def test_command_puts_the_binding_before_the_ranks():
    cmd, b = binding.command(["-n", "2", "python", "-m", "pipeline", "bench", "--threads", "8"], "auto",
                             "mpiexec", TWO_NUMA)
    assert b.policy == "numa" and b.rank_cpus == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert cmd[:3] == ["mpiexec", "-bind-to", "user:0+1+2+3,4+5+6+7"]
    assert cmd[cmd.index("-n"):] == ["-n", "2", "python", "-m", "pipeline", "bench", "--threads", "8"]
    at = cmd.index("QWEN3_BINDING")
    assert cmd[at - 1:at + 2] == ["-genv", "QWEN3_BINDING", "numa"]
    with pytest.raises(ValueError, match="-n P"):
        binding.command(["python"], "auto", "mpiexec", TWO_NUMA)


def test_topology_from_a_faked_sys(tmp_path):
    """Two sockets, one NUMA node each, 2 cores of 2 hyperthreads per socket, CPUs interleaved."""
    for cpu in range(8):
        top = tmp_path / "cpu" / f"cpu{cpu}" / "topology"
        top.mkdir(parents=True)
        (top / "physical_package_id").write_text(f"{cpu % 2}\n")
        (top / "core_id").write_text(f"{(cpu // 2) % 2}\n")
    for node, cpus in ((0, "0,2,4,6"), (1, "1,3,5-5,7")):
        d = tmp_path / "node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
    t = machine.topology(tmp_path)
    assert t["sockets"] == 2 and t["numa_nodes"] == 2 and t["physical_cores"] == 4 and t["logical_cpus"] == 8
    assert t["numa"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert t["cores"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    b = binding.choose(t, 2, 2)
    assert b.rank_cpus == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_cpu_list():
    assert machine.cpu_list("0-2,5,7-8\n") == [0, 1, 2, 5, 7, 8] and machine.cpu_list("") == []


def test_emulated_nodes_of_one_machine_share_its_cores():
    """Hosts node0 and node1 are namespaces of one machine (one boot id): overlapping CPUs are shared."""
    a = {"host": "node0", "machine": "b1", "cpus": [0, 1]}
    same = [a, {"host": "node1", "machine": "b1", "cpus": [1]}]
    apart = [a, {"host": "node1", "machine": "b2", "cpus": [0]}]
    old = [{"host": "vm", "cpus": [0]}, {"host": "vm", "cpus": [0]}]  # records without a boot id
    assert machine.shared_cpus(same) == [[0, 1]]
    assert machine.shared_cpus(apart) == []
    assert machine.shared_cpus(old) == [[0, 1]]
    assert machine.placement()["machine"] == machine.boot_id()


def test_placement_records_the_union_of_its_threads_masks(tmp_path):
    """With OMP_PROC_BIND the main thread holds only the first place: a rank's CPUs are the union
    over its threads (here: main thread on CPU 0, a second thread on the last CPU)."""
    import os
    import subprocess
    import sys

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    code = f"""
import os, threading, json
from pipeline.engine.machine import placement
ready, done = threading.Event(), threading.Event()
def pinned():
    os.sched_setaffinity(0, {{{cpus[-1]}}})
    ready.set(); done.wait()
t = threading.Thread(target=pinned); t.start(); ready.wait()
os.sched_setaffinity(0, {{{cpus[0]}}})
print(json.dumps(placement())); done.set(); t.join()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    p = json.loads(out)
    assert [cpus[0]] in p["thread_cpus"] and [cpus[-1]] in p["thread_cpus"]  # (+ BLAS's own threads)
    assert cpus[0] in p["cpus"] and cpus[-1] in p["cpus"]
