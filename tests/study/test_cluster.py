"""The emulated cluster: namespaces up and down (idempotent), ranks across nodes, capped links.

These need root and network namespaces; where either is missing they skip, saying which.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.study import cluster as cl
from tests.mpi import REPO, run_mpi

PREFIX = "qpt"  # the tests' own namespaces, apart from a user's cluster (prefix "qp")


def namespaces_work() -> str | None:
    """None when this machine can make network namespaces, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    probe = subprocess.run(["ip", "netns", "add", f"{PREFIX}-probe"], capture_output=True, text=True)
    if probe.returncode:
        return f"ip netns add failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"{PREFIX}-probe"], capture_output=True)
    return None


REASON = namespaces_work()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"emulated cluster: {REASON}")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "cluster", "--prefix", PREFIX, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def two_nodes():
    assert cli("up", "--nodes", "2").returncode == 0
    yield
    cli("down")


def test_refuses_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(cl.ClusterError, match="needs root"):
        cl.up(cl.Cluster(2, 0.0, PREFIX))


@needs_netns
def test_up_and_down_twice_are_idempotent():
    try:
        for expected in ("up", "already up"):
            proc = cli("up", "--nodes", "2", "--link-gbit", "1")
            assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr
        mine = {ns for ns in cl.namespaces() if ns.startswith(f"{PREFIX}-")}
        assert mine == {f"{PREFIX}-sw", f"{PREFIX}-n0", f"{PREFIX}-n1"}
        assert cli("up", "--nodes", "3").stdout.strip() == "up"  # another shape: rebuilt
        assert len({ns for ns in cl.namespaces() if ns.startswith(f"{PREFIX}-")}) == 4
    finally:
        first, second = cli("down"), cli("down")
    assert first.stdout.strip() == "removed 4 namespaces"
    assert second.stdout.strip() == "nothing to remove"
    assert not any(ns.startswith(f"{PREFIX}-") for ns in cl.namespaces())
    assert not cl.state_dir(PREFIX).exists()


@needs_netns
def test_mpiexec_without_a_cluster_says_so():
    cli("down")
    proc = cli("mpiexec", "-n", "2", "true")
    assert proc.returncode == 2 and "no emulated cluster" in proc.stderr


@needs_netns
def test_two_node_run_computes_the_one_node_logits(two_nodes, synthetic_tiny_export, tmp_path):
    gen = ["-m", "pipeline", "generate", "--export", str(synthetic_tiny_export),
           "--parallel-strategy", "headwise", "--prompt-ids", "3,1,4,1,5,9,2,6", "--max-new-tokens", "4",
           "--threads", "2"]
    local = run_mpi(2, [*gen, "--logits-out", str(tmp_path / "local.npy")])
    assert local.returncode == 0, local.stderr
    across = cli("mpiexec", "-n", "2", sys.executable, "-m", "mpi4py", *gen,
                 "--logits-out", str(tmp_path / "across.npy"))
    assert across.returncode == 0, across.stderr
    np.testing.assert_allclose(np.load(tmp_path / "across.npy"), np.load(tmp_path / "local.npy"),
                               rtol=0, atol=1e-5)
    assert across.stdout.splitlines()[0] == local.stdout.splitlines()[0]  # the same greedy tokens


ALLREDUCE = """
import socket, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
buf = np.ones(4 << 20, np.float32)  # 16 MB
comm.Allreduce(MPI.IN_PLACE, buf)
comm.Barrier()
t = time.perf_counter()
comm.Allreduce(MPI.IN_PLACE, buf)
seconds = comm.allreduce(time.perf_counter() - t, op=MPI.MAX)
hosts = comm.gather(socket.gethostname())
if comm.rank == 0:
    print(seconds, " ".join(hosts))
"""


def allreduce_seconds(tmp_path) -> tuple[float, str]:
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    proc = cli("mpiexec", "-n", "2", sys.executable, str(script))
    assert proc.returncode == 0, proc.stderr
    seconds, hosts = proc.stdout.split(maxsplit=1)
    return float(seconds), hosts.strip()


@needs_netns
def test_a_capped_link_is_slower_than_an_uncapped_one(tmp_path):
    try:
        assert cli("up", "--nodes", "2").returncode == 0
        uncapped, hosts = allreduce_seconds(tmp_path)
        assert hosts == "node0 node1"  # one rank on each node
        assert cli("up", "--nodes", "2", "--link-gbit", "0.1").stdout.strip() == "up"
        start = time.perf_counter()
        capped, _ = allreduce_seconds(tmp_path)
    finally:
        cli("down")
    # 16 MB each way at 100 Mb/s is >= 1.3 s; uncapped TCP here moves it in tens of ms
    assert capped >= 1.0 and time.perf_counter() - start < 60
    assert capped >= 5 * uncapped


LOOP = """
import os, signal, sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
buf = np.ones(1 << 14, np.float32)
start = time.time()
while time.time() - start < 90:
    comm.Allreduce(MPI.IN_PLACE, buf)
    buf[:] = 1
    if sys.argv[1] == "kill" and comm.rank == 1 and time.time() - start > 2:
        os.kill(os.getpid(), signal.SIGKILL)
"""


@needs_netns
@pytest.mark.parametrize("fault", ["kill", "link"])
def test_a_fault_across_nodes_ends_the_job_with_a_message(two_nodes, tmp_path, fault):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    cmd = [sys.executable, "-m", "pipeline", "cluster", "--prefix", PREFIX, "mpiexec", "-n", "2",
           sys.executable, str(script), fault]
    start = time.perf_counter()
    job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if fault == "link":
        time.sleep(3)
        subprocess.run(["ip", "-n", f"{PREFIX}-n1", "link", "set", "eth0", "down"], check=True)
    out, err = job.communicate(timeout=60)
    assert job.returncode != 0 and time.perf_counter() - start < 60
    time.sleep(1)
    assert subprocess.run(["pgrep", "-f", str(script)], capture_output=True).returncode == 1  # no rank left
    if fault == "link":
        assert "the link of node1 went down mid-run" in err
    else:
        assert "RUNNING AT 10.213.7.2" in out + err and "10.213.7.2 = node1" in err  # Hydra's banner, ours


@needs_netns
def test_terminating_the_launcher_ends_the_ranks(two_nodes, tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    cmd = [sys.executable, "-m", "pipeline", "cluster", "--prefix", PREFIX, "mpiexec", "-n", "2",
           sys.executable, str(script), "run"]
    job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    job.terminate()  # what `timeout` sends a hung bench
    job.wait(timeout=30)
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout.split()
    assert left == []
