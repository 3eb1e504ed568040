"""Work per rank and phase time: what each rank of a layout multiplies, reads and sends.

Every layout is one function in LAYOUTS, `fn(cfg, P, T, S, prefill, b) -> PhaseWork`: its ranks'
FLOPs and bytes from `partition.shard` ranges and `partition.prompt_chunks` positions (lengths of
ranges, never n // P), and the collectives it calls. `phase_time` turns that into seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from model_export.config import Qwen3Config
from pipeline.engine import partition
from pipeline.engine.strategies.layer import MICRO_BATCH
from pipeline.study.costmodel.network import Network, any_crosses, call_count, comm_time

KV_BYTES = 4  # the engine's KV cache is float32 whatever the weights' dtype
NORM_BYTES = 4  # norms are float32 in every export


@dataclass(frozen=True)
class Rates:
    """Per-core compute rates (FLOP/s) and per-node memory bandwidth (bytes/s), effective."""

    f_mm: float  # matmul FLOP/s per core (prefill GEMMs, lm_head)
    f_att: float  # attention FLOP/s per core
    f_dec: float  # decode matmul (GEMV) FLOP/s per core
    bandwidth: float  # bytes/s per node


@dataclass(frozen=True)
class FixedCost:
    """The engine's cost per forward that no FLOP or byte explains (Python, kernel launches):
    `step_s` once per forward, `layer_s` per layer a rank runs (measured on a tiny model)."""

    step_s: float = 0.0
    layer_s: float = 0.0

    def of(self, layers: int) -> float:
        return self.step_s + self.layer_s * layers


@dataclass(frozen=True)
class Placement:
    """How P ranks sit on physical machines: R ranks on each of `nodes`, c cores per rank, C cores
    per node (0: the ranks fill their node)."""

    nranks: int
    ranks_per_node: int
    nodes: int
    cores_per_rank: float
    cores_per_node: float = 0.0

    def bandwidth_share(self) -> float:
        """A rank's share of its node's streaming bandwidth: 1/R, less when the node's ranks
        leave cores idle (the streaming rate grows with the cores that stream on these VMs,
        docs/design-notes.md#network-calibration)."""
        used = self.cores_per_rank * self.ranks_per_node
        fill = min(1.0, used / self.cores_per_node) if self.cores_per_node else 1.0
        return fill / self.ranks_per_node


def local_placement(nranks: int, cores: int, threads_per_rank: int) -> Placement:
    """All ranks on this one machine; oversubscribed ranks time-share the cores."""
    return Placement(nranks, nranks, 1, min(float(threads_per_rank), cores / nranks), float(cores))


def cluster_placement(nranks: int, cores_per_node: int, ranks_per_node: int) -> Placement:
    R = min(nranks, ranks_per_node)
    return Placement(nranks, R, math.ceil(nranks / R), cores_per_node / R, float(cores_per_node))


@dataclass(frozen=True)
class RankWork:
    mm_flops: float  # matmul FLOPs
    att_flops: float  # attention FLOPs
    bytes: float  # bytes read (weights once, KV cache)
    layers: int  # layers it runs (the fixed cost per layer)


@dataclass(frozen=True)
class PhaseWork:
    ranks: list[RankWork]
    calls: list[tuple]  # (collective, bytes of its result, calls per phase[, communicator size[, stride]])
    # a pipeline: `ranks` are its stages in order (the slowest rank of each, its layers only),
    # run one after another per micro-batch; `tail` is the vocabulary-parallel lm_head after them
    micro_batches: int = 0
    tail: RankWork | None = None


def _shard_params(cfg: Qwen3Config, sh: partition.Shard) -> int:
    """Projection weights of one layer of this shard: q, k, v, o, gate, up, down."""
    d, D = cfg.hidden_size, cfg.head_dim
    H_r, Hkv_r, I_r = len(sh.q_heads), len(sh.kv_heads), len(sh.features)
    return d * H_r * D + 2 * d * Hkv_r * D + H_r * D * d + 3 * d * I_r


def _rank_work(cfg: Qwen3Config, sh: partition.Shard, tokens: int, pairs: int, cached: int,
               b: float) -> RankWork:
    """One rank: `tokens` rows through its shard's weights, `pairs` causal (query, key) pairs,
    `cached` KV positions read from its cache, the lm_head rows of its vocabulary block."""
    d, D, L_r = cfg.hidden_size, cfg.head_dim, len(sh.layers)
    M_r, V_r = _shard_params(cfg, sh), len(sh.vocab)
    mm = 2 * L_r * M_r * tokens + 2 * d * V_r  # lm_head on the last position only
    att = 4 * L_r * len(sh.q_heads) * D * pairs
    norms = NORM_BYTES * (L_r * (2 * d + 2 * D) + d)
    kv = 2 * L_r * len(sh.kv_heads) * D * KV_BYTES * cached
    return RankWork(mm, att, b * (L_r * M_r + V_r * d) + norms + kv, L_r)


def headwise(cfg: Qwen3Config, P: int, T: int, S: int, prefill: bool, b: float) -> PhaseWork:
    """Tensor parallel: a block of the heads and MLP features per rank; two Allreduces a layer."""
    ranks = []
    for r in range(P):
        sh = partition.shard(cfg, "headwise", P, r)
        if prefill:
            ranks.append(_rank_work(cfg, sh, T, T * (T + 1) // 2, 0, b))
        else:
            ranks.append(_rank_work(cfg, sh, 1, S, S, b))
    tokens = T if prefill else 1
    L = cfg.num_hidden_layers
    return PhaseWork(ranks, [("allreduce", 4 * tokens * cfg.hidden_size, 2 * L),
                             ("allgather", 4 * cfg.vocab_size, 1)])


def sequence(cfg: Qwen3Config, P: int, T: int, S: int, prefill: bool, b: float, layout: str,
             inside: int = 1) -> PhaseWork:
    """Context parallel over P / `inside` groups, the prompt split by `layout`; prefill gathers
    K and V, decode keeps the cache split by position and merges partial softmax statistics.
    With `inside` > 1 (sequenceA.headwiseB) each group splits its heads head-wise: the exchange
    carries its heads only, and two Allreduces a layer run inside the group."""
    L, d, D = cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim
    a = P // inside
    name = "sequence" if inside == 1 else f"sequence{a}.headwise{inside}"
    ranks = []
    for r in range(P):
        sh = partition.shard(cfg, name, P, r)
        if prefill:
            chunks = partition.prompt_chunks(name, T, P, r, layout)
            pairs = sum((c.stop * (c.stop + 1) - c.start * (c.start + 1)) // 2 for c in chunks)
            ranks.append(_rank_work(cfg, sh, sum(len(c) for c in chunks), pairs, 0, b))
        else:
            S_r = math.ceil(S / a)  # the cache split by position: the fullest rank
            ranks.append(_rank_work(cfg, sh, 1, S_r, S_r, b))
    sh = partition.shard(cfg, name, P, 0)
    H_r, Hkv_r = len(sh.q_heads), len(sh.kv_heads)
    T_r = math.ceil(T / a)
    if prefill:
        # the sequence level joins every `inside`-th rank (stride), the head-wise group adjacent ones
        calls = [("allgather", 4 * T * Hkv_r * D, 2 * L, a, inside),
                 ("allreduce", 4 * T_r * d, 2 * L, inside),
                 ("bcast", 4 * d, 1), ("allgather", 4 * cfg.vocab_size, 1)]
    else:
        calls = [("allgather", a * 4 * (H_r * D + 2 * H_r), L, a, inside),
                 ("allreduce", 4 * d, 2 * L, inside), ("allgather", 4 * cfg.vocab_size, 1)]
    return PhaseWork(ranks, calls)


def staged(cfg: Qwen3Config, P: int, T: int, S: int, prefill: bool, b: float, inside: int = 1,
           micro_batch: int = MICRO_BATCH) -> PhaseWork:
    """Pipeline parallel over P / `inside` stages, each a block of layers (head-wise over its
    `inside` ranks in layerA.headwiseB); prefill streams micro-batches through the stages, decode
    passes one token along. The lm_head stays vocabulary-parallel over all P ranks."""
    L, d = cfg.num_hidden_layers, cfg.hidden_size
    a = P // inside
    name = "layer" if inside == 1 else f"layer{a}.headwise{inside}"
    m = len(partition.micro_batches(T, micro_batch)) if prefill else 1
    rows = min(T, micro_batch) if prefill else 1
    stages, tail = [], []
    for g in range(a):
        works = []
        for r in range(g * inside, (g + 1) * inside):
            sh = partition.shard(cfg, name, P, r)
            layers_only = partition.Shard(r, P, sh.layers, sh.kv_heads, sh.q_heads, sh.features, range(0))
            works.append(_rank_work(cfg, layers_only, T, T * (T + 1) // 2, 0, b) if prefill
                         else _rank_work(cfg, layers_only, 1, S, S, b))
            tail.append(RankWork(2 * d * len(sh.vocab), 0.0, b * len(sh.vocab) * d, 0))
        stages.append(max(works, key=lambda w: w.mm_flops + w.att_flops))
    per_stage_layers = math.ceil(L / a)
    calls = [("send", 4 * rows * d, (a - 1) + (m - 1), a, inside),  # critical path: fill, then one per batch
             ("allreduce", 4 * rows * d, 2 * (L + (m - 1) * per_stage_layers), inside),
             ("bcast", 4 * d, 1), ("allgather", 4 * cfg.vocab_size, 1)]
    return PhaseWork(stages, calls, micro_batches=m, tail=max(tail, key=lambda w: w.mm_flops))


# The cost model's layouts, each one function with the signature of `headwise`: its ranks' work
# from partition.shard of its engine name (RankWork.layers counts a stage's layers, so the fixed
# cost follows), its calls with a communicator size for a sub-communicator. A two-level family
# ("layer.headwise2") is its engine layout at any P that B divides ("layer4.headwise2" at P = 8).
INSIDE = 2  # the head-wise group of the two-level families: a pair of ranks (cores, or nodes)
LAYOUTS = {"headwise": headwise, "sequence": partial(sequence, layout="contiguous"),
           "sequence_zigzag": partial(sequence, layout="zigzag"), "layer": staged,
           f"layer.headwise{INSIDE}": partial(staged, inside=INSIDE),
           f"sequence_zigzag.headwise{INSIDE}": partial(sequence, layout="zigzag", inside=INSIDE)}
STRATEGIES = tuple(LAYOUTS)


def engine_layout(strategy: str, P: int) -> tuple[str, str]:
    """(engine layout name, sequence layout) that runs cost-model layout `strategy` at P ranks."""
    across, _, inside = strategy.partition(".")
    seq = "zigzag" if across.endswith("_zigzag") else "contiguous"
    across = across.removesuffix("_zigzag")
    if not inside:
        return across, seq
    b = int(inside.removeprefix("headwise"))
    return (f"{across}{P // b}.{inside}" if P % b == 0 else f"{across}?.{inside}"), seq


def family(cell: dict) -> str:
    """The cost-model layout of a measured cell: its engine layout, "_zigzag" for a zigzag
    sequence split, a two-level layout's outer count dropped ("layer2.headwise2": "layer.headwise2")."""
    name = cell["parallel_strategy"]
    if name.startswith("sequence") and cell.get("sequence_layout", "contiguous") == "zigzag":
        name = name.replace("sequence", "sequence_zigzag", 1)
    across, dot, inside = name.partition(".")
    return across.rstrip("0123456789") + dot + inside


def why_not(cfg: Qwen3Config, strategy: str, P: int, T: int) -> str | None:
    """None if the engine can run `strategy` at P ranks with a T-token prompt, else the reason."""
    if strategy not in LAYOUTS:
        return f"unknown cost-model layout {strategy!r}; choose from {list(STRATEGIES)}"
    name, _ = engine_layout(strategy, P)
    if "?" in name:
        inside = strategy.partition(".")[2]
        return f"{strategy}: {P} ranks are not groups of {inside.removeprefix('headwise')}"
    return partition.why_not(cfg, name, P, T)


def sequence_blocks(T: int, P: int, zigzag: bool) -> list[tuple[int, int]]:
    """(tokens, causal pairs) of each rank's prompt positions: contiguous blocks or zig-zag chunks."""
    out = []
    for r in range(P):
        chunks = partition.prompt_chunks("sequence", T, P, r, "zigzag" if zigzag else "contiguous")
        pairs = sum((c.stop * (c.stop + 1) - c.start * (c.start + 1)) // 2 for c in chunks)  # sum of t + 1
        out.append((sum(len(c) for c in chunks), pairs))
    return out


def phase_time(cfg: Qwen3Config, strategy: str, phase: str, T: int, place: Placement, rates: Rates,
               net: Network, dtype_bytes: float, context: int = 0, fixed: FixedCost | None = None,
               inter: Network | None = None, hosts: list[str] | None = None) -> dict:
    """Predicted seconds of one prefill of T tokens, or one decode step over `context`+1 keys.

    Calls on communicators that span several of `hosts` (rank r ran on hosts[r]) run on `inter`,
    the others on `net`. Returns {"total_s", "flop_s", "memory_s", "fixed_s", "comm_s", "wait_s",
    "bound"} of the slowest rank (comm: inside MPI once all ranks arrived; wait: before).
    """
    if strategy not in LAYOUTS:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    prefill = phase == "prefill"
    work = LAYOUTS[strategy](cfg, place.nranks, T, context + 1, prefill, dtype_bytes)
    c, bw = place.cores_per_rank, rates.bandwidth * place.bandwidth_share()
    f_mm = rates.f_mm if prefill else rates.f_dec
    fixed = fixed or FixedCost()

    def busy(w: RankWork) -> tuple[float, float, float]:
        flop = w.mm_flops / (c * f_mm) + w.att_flops / (c * rates.f_att)
        return flop, w.bytes / bw, fixed.of(w.layers)

    if work.micro_batches:
        flop_s, memory_s, fixed_s = _pipeline_busy([busy(w) for w in work.ranks], work.micro_batches, prefill)
        tail = busy(work.tail)
        flop_s, memory_s = flop_s + tail[0], memory_s + tail[1]
    else:
        flop_s, memory_s, fixed_s = max((busy(w) for w in work.ranks),
                                        key=lambda x: _overlap(x[0], x[1], prefill) + x[2])
    comm = comm_time(work.calls, place.nranks, net, inter, hosts)
    crossed = inter is not None and any_crosses(work.calls, place.nranks, hosts)
    communicates = any((g[0] if g else place.nranks) > 1 for _n, _b, _c, *g in work.calls)
    work_s = _overlap(flop_s, memory_s, prefill) + fixed_s
    on = inter if crossed else net
    calls = call_count(work.calls, place.nranks)
    wait = on.wait_per_call * calls + on.wait_fraction * work_s if communicates else 0.0
    return {"total_s": work_s + comm + wait, "flop_s": flop_s,
            "memory_s": memory_s, "fixed_s": fixed_s, "comm_s": comm, "wait_s": wait,
            "bound": "compute" if flop_s >= memory_s else "memory"}


def _overlap(flop_s: float, memory_s: float, prefill: bool) -> float:
    """A rank's busy time from its FLOP and memory time. Decode's GEMVs stream the weights at one
    FLOP per 2 bytes, the FLOPs hidden under the stream: the larger of the two. A prefill GEMM
    reads each weight once from memory and does not hide that read: the sum (on this machine the
    sum, not the max, puts head-wise, sequence and layer prefill at one rank speed, sequence
    reading twice the weights per rank: docs/design-notes.md#network-calibration)."""
    return flop_s + memory_s if prefill else max(flop_s, memory_s)


def _pipeline_busy(stages: list[tuple[float, float, float]], m: int,
                   prefill: bool = True) -> tuple[float, float, float]:
    """(flop, memory, fixed) seconds of m micro-batches through stages run one after another:
    the first batch crosses every stage, then the slowest stage paces the other m - 1. Each batch
    reads its stage's weights again (memory) and pays the per-layer cost again (fixed)."""
    per_batch = [(f / m, mem, fx) for f, mem, fx in stages]
    slowest = max(per_batch, key=lambda x: _overlap(x[0], x[1], prefill) + x[2])
    return tuple(sum(x[i] for x in per_batch) + (m - 1) * slowest[i] for i in range(3))


def predict(cfg: Qwen3Config, strategy: str, P: int, prompt_len: int, place: Placement, rates: Rates,
            net: Network, dtype_bytes: float, gen_len: int = 1, fixed: FixedCost | None = None,
            inter: Network | None = None, hosts: list[str] | None = None) -> dict:
    """Prefill tok/s of the prompt and decode tok/s over `gen_len` steps after it (calls spanning
    several of `hosts` on `inter`, see phase_time).

    "prefill" and "decode" hold the times of the phase (decode: all gen_len steps summed, and
    "step_s" their mean), split into FLOP, memory, fixed and communication terms.
    """
    links = {"inter": inter, "hosts": hosts}
    pre = phase_time(cfg, strategy, "prefill", prompt_len, place, rates, net, dtype_bytes, fixed=fixed,
                     **links)
    steps = [phase_time(cfg, strategy, "decode", 1, place, rates, net, dtype_bytes, prompt_len + i, fixed,
                        **links) for i in range(gen_len)]
    decode = {k: sum(s[k] for s in steps) for k in ("total_s", "flop_s", "memory_s", "fixed_s", "comm_s",
                                                     "wait_s")}
    decode["bound"] = steps[-1]["bound"]
    decode["step_s"] = decode["total_s"] / gen_len
    return {"prefill_tok_s": prompt_len / pre["total_s"], "prefill": pre,
            "decode_tok_s": gen_len / decode["total_s"], "decode": decode}
