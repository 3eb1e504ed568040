"""The network term: alpha-beta per message-size class, the collectives' algorithms, and their
calibration from pipeline.study.commbench's sweep (shared memory, or across emulated links)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.study.commbench import allreduce_alpha_beta, fit_alpha_beta

# Used when comm.json is missing (stated as "assumed" in the output): shared-memory MPI on one node.
ASSUMED_INTRA = (5e-6, 1 / 5e9)
# Message-size classes, upper bounds in bytes: below 64 KiB a message is latency bound (eager
# protocol, one TCP segment burst), above it bandwidth bound; one alpha-beta line cannot fit both
# (docs/design-notes.md#network-calibration).
SIZE_CLASSES = (64 << 10, math.inf)


@dataclass(frozen=True)
class Network:
    """alpha (s per message) and beta (s per byte); `classes` refine them per message size.

    `classes` holds (upper bound in bytes, alpha, beta), ascending; a message takes the first
    class it fits. `per_call` is the engine's own cost inside each collective beyond what the
    sweep's back-to-back calls show (Python, books, a peer not yet scheduled), measured in situ;
    `per_call_classes` refines it per message-size class as (upper bound, seconds): a 512 KiB
    prefill Allreduce in situ costs more than a 4 KiB decode one. The waiting for the slowest
    rank is `wait_per_call` per collective (the scheduler's skew at each call) plus
    `wait_fraction` per second of a rank's busy time (its delays accrue with the work between two
    collectives: on the 0.6B model this term is all of it, on a tiny one the first).
    """

    alpha: float
    beta: float
    classes: tuple[tuple[float, float, float], ...] = ()
    per_call: float = 0.0
    wait_fraction: float = 0.0
    per_call_classes: tuple[tuple[float, float], ...] = ()
    wait_per_call: float = 0.0

    def at(self, nbytes: float) -> tuple[float, float]:
        for upper, alpha, beta in self.classes:
            if nbytes <= upper:
                return alpha, beta
        return self.alpha, self.beta

    def extra(self, nbytes: float) -> float:
        """The in-situ cost of one call whose messages are `nbytes` long."""
        for upper, seconds in self.per_call_classes:
            if nbytes <= upper:
                return seconds
        return self.per_call


def _lg(P: int) -> int:
    return math.ceil(math.log2(P)) if P > 1 else 0


def t_allreduce(nbytes: float, P: int, net: Network) -> float:
    if P < 2:
        return 0.0
    alpha, beta = net.at(nbytes)
    return 2 * _lg(P) * alpha + 2 * (P - 1) / P * nbytes * beta + net.extra(nbytes)


def t_allgather(nbytes: float, P: int, net: Network) -> float:
    """`nbytes` = size of the gathered result; the class is that of one rank's part."""
    if P < 2:
        return 0.0
    alpha, beta = net.at(nbytes / P)
    return _lg(P) * alpha + (P - 1) / P * nbytes * beta + net.extra(nbytes / P)


def t_bcast(nbytes: float, P: int, net: Network) -> float:
    if P < 2:
        return 0.0
    alpha, beta = net.at(nbytes)
    return _lg(P) * (alpha + nbytes * beta) + net.extra(nbytes)


def t_send(nbytes: float, P: int, net: Network) -> float:
    """One point-to-point message (e.g. activations from one pipeline stage to the next)."""
    if P < 2:
        return 0.0
    alpha, beta = net.at(nbytes)
    return alpha + nbytes * beta + net.extra(nbytes)


COLLECTIVES = {"allreduce": t_allreduce, "allgather": t_allgather, "bcast": t_bcast, "send": t_send}


def crosses(hosts: list[str] | None, ranks: int, stride: int = 1) -> bool:
    """Whether a communicator of `ranks` ranks `stride` apart (rank 0's: 0, stride, ...) spans
    more than one of the hosts the ranks ran on (`hosts[r]`: rank r's)."""
    if not hosts:
        return False
    return len({hosts[i * stride] for i in range(ranks) if i * stride < len(hosts)}) > 1


def comm_time(calls: list[tuple], P: int, net: Network, inter: Network | None = None,
              hosts: list[str] | None = None) -> float:
    """Seconds of a phase's collectives, given as (collective, bytes, how many calls[, ranks[,
    stride]]): `ranks` is the size of the communicator the call runs on (a sub-communicator of a
    two-level layout; P when left out), `stride` the distance between its ranks (1: adjacent
    ranks, the inner group; the outer level's communicators join every `inside`-th rank). A call
    whose communicator spans several of `hosts` runs on `inter` (the link between nodes), the
    others on `net`."""
    total = 0.0
    for name, nbytes, count, *rest in calls:
        ranks, stride = (rest + [P, 1][len(rest):])[:2]
        on = inter if inter is not None and crosses(hosts, ranks, stride) else net
        total += count * COLLECTIVES[name](nbytes, ranks, on)
    return total


def any_crosses(calls: list[tuple], P: int, hosts: list[str] | None) -> bool:
    """Whether any of a phase's calls runs on a communicator that spans hosts."""
    return any(crosses(hosts, *(rest + [P, 1][len(rest):])[:2]) for _n, _b, _c, *rest in calls)


def message_bytes(name: str, nbytes: float, ranks: int) -> float:
    """The message length that picks a call's size class (an Allgather's: one rank's part)."""
    return nbytes / ranks if name == "allgather" else nbytes


def class_counts(calls: list[tuple], P: int) -> list[float]:
    """Per SIZE_CLASSES class, how many of a phase's calls communicate with messages of it."""
    counts = [0.0] * len(SIZE_CLASSES)
    for name, nbytes, count, *rest in calls:
        ranks = rest[0] if rest else P
        if ranks > 1:
            n = message_bytes(name, nbytes, ranks)
            counts[next(i for i, upper in enumerate(SIZE_CLASSES) if n <= upper)] += count
    return counts


def call_count(calls: list[tuple], P: int) -> int:
    """How many of a phase's calls communicate (on a communicator of more than one rank)."""
    return sum(count for _name, _nbytes, count, *group in calls if (group[0] if group else P) > 1)


def fit_classes(sizes: list[int], times: list[float], P: int) -> tuple[tuple[float, float, float], ...]:
    """Per size class, the Allreduce sweep's (alpha, beta) under the Allreduce formula."""
    out = []
    lower = 0.0
    for upper in SIZE_CLASSES:
        pts = [(n, t) for n, t in zip(sizes, times, strict=True) if lower < n <= upper]
        lower = upper
        if len(pts) < 2:
            continue
        a, b = fit_alpha_beta([n for n, _ in pts], [t for _, t in pts])
        alpha, beta = allreduce_alpha_beta(a, b, P)
        out.append((upper, alpha, beta))
    return tuple(out)


def network_from_comm(comm: dict | None, per_call: float = 0.0) -> tuple[Network, dict]:
    """(alpha, beta) of a sweep: the Allreduce's (the collective the engine uses most) with its
    size classes, else the ping-pong's, else ASSUMED_INTRA."""
    if comm and comm.get("allreduce"):
        ar = comm["allreduce"]
        classes = fit_classes(ar.get("sizes_bytes", []), ar.get("median_s", []), comm["nranks"])
        net = Network(ar["alpha_s"], ar["beta_s_per_byte"], classes, per_call)
        return net, {"source": f"allreduce sweep at P={comm['nranks']}", "alpha_s": ar["alpha_s"],
                     "beta_s_per_byte": ar["beta_s_per_byte"], "per_call_s": per_call,
                     "classes": [{"up_to_bytes": None if math.isinf(u) else u, "alpha_s": a,
                                  "beta_s_per_byte": b} for u, a, b in classes]}
    if comm and comm.get("pingpong"):
        pp = comm["pingpong"]
        return Network(pp["alpha_s"], pp["beta_s_per_byte"], per_call=per_call), {
            "source": "ping-pong", "alpha_s": pp["alpha_s"], "beta_s_per_byte": pp["beta_s_per_byte"],
            "per_call_s": per_call, "classes": []}
    alpha, beta = ASSUMED_INTRA
    return Network(alpha, beta, per_call=per_call), {
        "source": "assumed (no comm.json measurement)", "alpha_s": alpha, "beta_s_per_byte": beta,
        "per_call_s": per_call, "classes": []}
