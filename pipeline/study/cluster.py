"""An emulated cluster on one machine: N "nodes" as network namespaces joined by capped links.

    python -m pipeline cluster up --nodes 2 [--link-gbit 10]    # idempotent; needs root
    python -m pipeline cluster mpiexec -n 4 python -m mpi4py -m pipeline bench ...
    python -m pipeline cluster status
    python -m pipeline cluster down                              # idempotent

Node i is the namespace `{prefix}-n{i}` with hostname `node{i}` and address 10.213.7.{i+1} on its
`eth0`, a veth whose peer sits on a bridge in the switch namespace `{prefix}-sw`; every address
lives inside namespaces this tool creates. A link cap is `tc tbf` on both ends of each veth (this
kernel has no netem, so no added delay). `cluster mpiexec` runs Hydra inside node 0 with a host
file of every node and a launcher that starts each node's proxy in its namespace; ranks are
placed in blocks (ranks 0..k-1 on node 0, ...). Between nodes MPICH talks TCP (ofi's tcp provider:
MPICH's netmods would otherwise use shared memory across namespaces); inside a node it still uses
shared memory (docs/design-notes.md#emulated-cluster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from model_export.atomic import write_json_atomic, write_text_atomic

SUBNET = "10.213.7"  # a private /24 used only inside this tool's namespaces
MAX_NODES = 32
# Between namespaces MPICH must use TCP (its netmods carry their own shared memory otherwise).
TCP_ENV = {"MPICH_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"}


class ClusterError(RuntimeError):
    """A clear, one-line reason the emulated cluster cannot be set up or used."""


@dataclass(frozen=True)
class Cluster:
    nodes: int
    link_gbit: float  # 0 = uncapped
    prefix: str = "qp"

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def node(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    @property
    def state_dir(self) -> Path:
        return state_dir(self.prefix)


def state_dir(prefix: str) -> Path:
    return Path(os.environ.get("QWEN3_CLUSTER_STATE", "/run/qwen3-parallel")) / f"cluster-{prefix}"


def run(*cmd: str) -> None:
    """Run one setup command; a failure becomes a ClusterError naming the command and its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise ClusterError(f"`{shlex.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")


def check_host() -> None:
    """Refuse, with the reason, where namespaces cannot be made: not root, or no `ip`/`tc`."""
    if os.geteuid() != 0:
        raise ClusterError("the emulated cluster needs root (network namespaces, veth, tc)")
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            raise ClusterError(f"`{tool}` not found on PATH (install iproute2 / util-linux)")


def namespaces() -> set[str]:
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def load_state(prefix: str) -> Cluster | None:
    path = state_dir(prefix) / "state.json"
    if not path.exists():
        return None
    return Cluster(**json.loads(path.read_text()))


def cap_link(ns: str, dev: str, gbit: float) -> None:
    if gbit > 0:
        # burst of 256 KiB and a 5 ms queue: a 64 MB Allreduce then takes the capped rate's time
        run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{gbit * 1000:g}mbit", "burst", "256kb", "latency", "5ms")


def add_node(cluster: Cluster, i: int) -> None:
    ns, outer, inner = cluster.node(i), f"{cluster.prefix}v{i}", f"{cluster.prefix}b{i}"
    run("ip", "netns", "add", ns)
    run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
    run("ip", "link", "set", outer, "netns", ns)
    run("ip", "link", "set", inner, "netns", cluster.switch)
    run("ip", "-n", cluster.switch, "link", "set", inner, "master", "br0", "up")
    run("ip", "-n", ns, "link", "set", outer, "name", "eth0")
    run("ip", "-n", ns, "addr", "add", f"{cluster.address(i)}/24", "dev", "eth0")
    run("ip", "-n", ns, "link", "set", "eth0", "up")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    cap_link(ns, "eth0", cluster.link_gbit)
    cap_link(cluster.switch, inner, cluster.link_gbit)


def write_launch_files(cluster: Cluster) -> None:
    """The host file and the launcher Hydra calls as `launcher [ssh options] HOST COMMAND...`."""
    d = cluster.state_dir
    hosts = "".join(f"{cluster.address(i)}:{MAX_NODES}\n" for i in range(cluster.nodes))
    write_text_atomic(d / "hosts", hosts)
    launcher = (
        "#!/bin/sh\n# Hydra's 'ssh': start HOST's proxy inside its namespace, with its hostname.\n"
        'while [ "$#" -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done\n'
        'host=$1; shift; i=$(( ${host##*.} - 1 ))\n'
        f'exec ip netns exec {cluster.prefix}-n$i unshare --uts sh -c "hostname node$i; exec $*"\n'
    )
    write_text_atomic(d / "launch", launcher)
    (d / "launch").chmod(0o755)
    write_json_atomic(d / "state.json", asdict(cluster))


def up(cluster: Cluster) -> str:
    """Create the cluster; nothing when the same one is up, rebuilt when it differs. Returns what it did.

    Any failure (or Ctrl-C) part-way tears down what was made, so no half cluster is left.
    """
    check_host()
    if not 1 <= cluster.nodes <= MAX_NODES:
        raise ClusterError(f"--nodes must be 1..{MAX_NODES}, not {cluster.nodes}")
    if cluster.link_gbit < 0:
        raise ClusterError(f"--link-gbit must be >= 0 (0 = uncapped), not {cluster.link_gbit}")
    if load_state(cluster.prefix) == cluster and cluster.switch in namespaces():
        return "already up"
    down(cluster.prefix)
    try:
        run("ip", "netns", "add", cluster.switch)
        run("ip", "-n", cluster.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", cluster.switch, "link", "set", "br0", "up")
        for i in range(cluster.nodes):
            add_node(cluster, i)
        write_launch_files(cluster)
    except BaseException:
        down(cluster.prefix)
        raise
    return "up"


def kill_processes(names: list[str]) -> int:
    """SIGKILL every process inside these namespaces; returns how many there were.

    Hydra starts the ranks in process groups of their own, so killing the job's session leaves
    them running; a deleted namespace would keep them alive, unseen, on the cores.
    """
    pids = set()
    for ns in names:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        pids |= {int(pid) for pid in out.split()} - {os.getpid()}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def down(prefix: str = "qp") -> str:
    """Remove every namespace of this prefix (their veths go with them) and the state files."""
    check_host()
    mine = sorted(ns for ns in namespaces() if ns.startswith(f"{prefix}-"))
    kill_processes(mine)
    for ns in mine:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    shutil.rmtree(state_dir(prefix), ignore_errors=True)
    return f"removed {len(mine)} namespaces" if mine else "nothing to remove"


def ranks_of(argv: list[str]) -> int:
    for flag in ("-n", "-np"):
        if flag in argv[:-1]:
            return int(argv[argv.index(flag) + 1])
    raise ClusterError("cluster mpiexec needs -n P before the command")


def mpiexec_command(cluster: Cluster, argv: list[str], mpiexec: str) -> list[str]:
    """mpiexec in node 0 over the host file, ranks placed in blocks of ceil(P / nodes) per node."""
    per_node = math.ceil(ranks_of(argv) / cluster.nodes)
    d = cluster.state_dir
    env = [f"{k}={v}" for k, v in TCP_ENV.items()]
    inner = shlex.join(["env", *env, mpiexec, "-f", str(d / "hosts"), "-launcher", "ssh",
                        "-launcher-exec", str(d / "launch"), "-iface", "eth0", "-ppn", str(per_node),
                        *argv])
    return ["ip", "netns", "exec", cluster.node(0), "unshare", "--uts", "sh", "-c",
            f"hostname node0; exec {inner}"]


def links_down(cluster: Cluster) -> list[str]:
    """The nodes whose link is down at either end (`ip link set down`, a lost carrier)."""
    down = []
    for i in range(cluster.nodes):
        ends = [(cluster.node(i), "eth0"), (cluster.switch, f"{cluster.prefix}b{i}")]
        for ns, dev in ends:
            out = subprocess.run(["ip", "-n", ns, "-o", "link", "show", dev], capture_output=True, text=True)
            if out.returncode or "state DOWN" in out.stdout or "NO-CARRIER" in out.stdout:
                down.append(f"node{i}")
                break
    return down


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_watched(cluster: Cluster, cmd: list[str], poll_s: float = 1.0) -> int:
    """Run the job; end it with a message naming the node when a link goes down mid-run.

    TCP alone notices a dead link only after minutes of retransmissions
    (docs/design-notes.md#emulated-cluster), so the links are polled: the whole job (its own
    session) is killed within ~poll_s.
    """
    proc = subprocess.Popen(cmd, start_new_session=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # `timeout` or a closed terminal: end the job too
        signal.signal(sig, _exit_on_signal)
    try:
        while True:
            try:
                rc = proc.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                down = links_down(cluster)
            else:
                if rc:  # Hydra names a failed rank by its node's address: say which node that is
                    names = ", ".join(f"{cluster.address(i)} = node{i}" for i in range(cluster.nodes))
                    print(f"error: emulated cluster: the job failed (exit {rc}); {names}",
                          file=sys.stderr, flush=True)
                return rc
            if down:
                end_job(cluster, proc)
                print(f"error: emulated cluster: the link of {', '.join(down)} went down mid-run; "
                      f"the job was ended", file=sys.stderr, flush=True)
                return 3
    except BaseException:  # Ctrl-C or a kill of this process: no rank is left behind
        end_job(cluster, proc)
        raise


def end_job(cluster: Cluster, proc: subprocess.Popen) -> None:
    """Kill the launcher's session, then whatever still runs on the nodes (the ranks)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    kill_processes([cluster.node(i) for i in range(cluster.nodes)])
    proc.wait()


def find_mpiexec() -> str:
    """The mpiexec next to this Python (the PyPI mpich wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        raise ClusterError("mpiexec not found: install the project (pip install -e .) for the mpich wheel")
    return found


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", default="qp", help="namespace name prefix (tests use their own)")
    sub = p.add_subparsers(dest="action", required=True)
    u = sub.add_parser("up", help="create (or keep) the cluster")
    u.add_argument("--nodes", type=int, required=True)
    u.add_argument("--link-gbit", type=float, default=0.0, help="cap of every link, Gb/s (0 = uncapped)")
    sub.add_parser("down", help="remove the cluster")
    sub.add_parser("status", help="print the cluster's state as JSON")
    sub.add_parser("mpiexec", help="mpiexec across the nodes: -n P COMMAND... (mpiexec's own options)")
    if "mpiexec" in argv:  # everything after it belongs to mpiexec, options included
        cut = argv.index("mpiexec") + 1
        args = p.parse_args(argv[:cut])
        args.rest = argv[cut:]
        return args
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.action == "up":
            print(up(Cluster(args.nodes, args.link_gbit, args.prefix)))
        elif args.action == "down":
            print(down(args.prefix))
        elif args.action == "status":
            state = load_state(args.prefix)
            print(json.dumps(asdict(state) if state else None))
        else:
            cluster = load_state(args.prefix)
            if cluster is None:
                raise ClusterError(f"no emulated cluster {args.prefix!r} is up (run: cluster up --nodes N)")
            return run_watched(cluster, mpiexec_command(cluster, args.rest, find_mpiexec()))
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
