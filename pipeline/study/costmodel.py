"""An alpha-beta + roofline model of the engine: calibrated on this machine, extrapolated to a cluster.

    python -m pipeline costmodel --runs results/runs/*.json --comm results/comm.json \
        [--cluster cores_per_node=64 mem_gb_s_per_node=200 net_alpha_s=2e-6 net_bandwidth_gb_s=12.5] \
        --out results/costmodel.json

Calibration (per model and stored dtype, per attention algorithm) uses only the single-rank
cells: their prefill gives the compute rates, their decode the memory bandwidth; comm.json
(pipeline.study.commbench) gives the intra-node alpha and beta. The model then predicts every measured
cell (the prediction error is in the output) and tokens/s per strategy for P = 1..64 ranks and
prompt lengths up to 32k on a cluster described by config values.

The equations are in EQUATIONS_MD below (rendered by the report's appendix); in short: a rank's
phase time is max(FLOP time, memory time) + communication time, communication is alpha-beta with
the standard collective algorithms, and the work per rank follows exactly what each strategy of
pipeline/engine/strategies does (which weights it reads, which tokens and heads it computes, which
collectives it calls with how many bytes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.atomic import write_json_atomic
from model_export.config import Qwen3Config
from pipeline.cells import CellId
from pipeline.engine import partition
from pipeline.study.roofline import attention_pairs, layer_matmul_params, model_bytes

SCHEMA_VERSION = 1
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
KV_BYTES = 4  # the engine's KV cache is float32 whatever the weights' dtype
# The cost model's strategies as the engine's (strategy, sequence layout); what can run and who
# computes which tokens come from pipeline.engine.partition. Its "sequence" is the contiguous split.
ENGINE_LAYOUTS = {"headwise": ("headwise", "contiguous"), "sequence": ("sequence", "contiguous"),
                  "sequence_zigzag": ("sequence", "zigzag")}
STRATEGIES = tuple(ENGINE_LAYOUTS)
DEFAULT_RANKS = [1, 2, 4, 8, 16, 32, 64]
DEFAULT_PROMPT_LENS = [128, 512, 1024, 2048, 4096, 8192, 16384, 32768]
# Used when comm.json is missing (stated as "assumed" in the output): shared-memory MPI on one node.
ASSUMED_INTRA = (5e-6, 1 / 5e9)
# The default cluster network: 100 Gb/s InfiniBand-class (config values override).
DEFAULT_NET_ALPHA_S = 2e-6
DEFAULT_NET_BANDWIDTH_GB_S = 12.5
MIN_SHARE_SPREAD = 0.1  # attention FLOP share difference needed to fit a separate attention rate

EQUATIONS_MD = r"""
### Cost model

Notation: `L` layers, `d` hidden, `H`/`Hkv` query/KV heads, `D` head_dim, `I` intermediate,
`V` vocab, `P` ranks, `T` prompt tokens, `S` keys in the cache, `b` bytes per weight element
(4 float32, 2 bf16), KV cache float32.

**Work.** Projection weights per layer `M = d·H·D + 2·d·Hkv·D + H·D·d + 3·d·I`.

- matmul FLOPs of `T` tokens: `W_mm(T) = 2·L·M·T + 2·d·V` (lm_head on the last position only)
- attention FLOPs: `W_att = 4·L·H·D·pairs`, with `pairs` the causal (query, key) pairs:
  `pairs(T) = T(T+1)/2` for a prefill, `S` for a decode step over `S` keys
- bytes read: `Q_w = b·(L·M + V·d) + 4·(norms)` (every weight once; the lm_head in full),
  `Q_kv(S) = 2·L·S·Hkv·D·4`

**A rank's time.** `R` ranks share a node of `C` cores and bandwidth `B`; a rank has `c = C/R`
cores (fewer than one if oversubscribed) and `B/R` bandwidth. With per-core rates `f_mm`
(matmuls), `f_att` (attention), `f_dec` (decode GEMVs):

`t_rank = max(W_mm,r/(c·f_mm) + W_att,r/(c·f_att),  Q_r/(B/R)) + t_comm,r`

and a phase takes the slowest rank's time. Prefill tok/s = `T / t`, decode tok/s = `1 / t_step`.

**Collectives** (alpha-beta, Thakur-Rabenseifner algorithms), `n` = bytes of the result,
`lg = ceil(log2 P)`: Allreduce `2·lg·α + 2(P-1)/P·n·β`; Allgather(v) `lg·α + (P-1)/P·n·β`;
Bcast `lg·(α + n·β)`. `α, β` are the intra-node values (measured by the ping-pong/Allreduce sweep)
when all ranks share a node, otherwise the network's (config values).

**Per strategy** (what pipeline/engine/strategies does):

| phase | FLOPs per rank (matmul; attention) | bytes per rank | communication |
|---|---|---|---|
| headwise prefill | `W_mm/P`; `W_att/P` | `Q_w/P` | `2L`·AR(`4Td`) + AG(`4V`) |
| headwise decode | `W_mm(1)/P`; `4LHD·S/P` | `(Q_w+Q_kv(S))/P` | `2L`·AR(`4d`) + AG(`4V`) |
| sequence prefill | `2LM·T_r+2dV/P`; `4LHD·pairs_r` | `bLM+bVd/P` | `2L`·AG(`4T·Hkv·D`)+BC(`4d`)+AG(`4V`) |
| sequence decode | `2LM+2dV/P`; `4LHD·S/P` | `bLM + (bVd+Q_kv(S))/P` | `L`·AG(`4P(HD+2H)`) + AG(`4V`) |

AR = Allreduce (after o_proj and down_proj), AG = Allgather(v) (prefill K and V; decode the
(o, m, l) statistics; the logits of the vocabulary-parallel lm_head), BC = Bcast (the last
position's hidden state from the rank that owns it).

`T_r` and `pairs_r` are the tokens and causal pairs of the slowest rank: with contiguous blocks
(the engine's `sequence`) the last rank has `pairs ≈ (T/P)(T - T/2P)`, almost twice the balanced
`T²/2P`; `sequence_zigzag` (zig-zag, as in Megatron's context parallelism) gives rank `r`
chunks `r` and `2P-1-r` of `2P` equal chunks, which balances them.
Under sequence decode every rank reads all layer weights, so `R` ranks on a node need `R` times
the bytes of one: it pays off only across nodes or when attention over a long cache dominates.

**Calibration** on this machine's single-rank cells (per attention algorithm):
`f_mm` (and `f_att`) from prefill: `t·c = W_mm/f_mm + W_att/f_att`, least squares on relative
error over the prompt lengths measured (one length: `f_att = f_mm`, which is exact for that cell);
`B = ΣQ(S_i)/t_decode` over the decode steps; `f_dec` is `f_mm`, raised if needed until no
calibration step is compute bound, so the cell is reproduced; `α, β` from the Allreduce sweep
(`t = 2·lg·α + 2(P-1)/P·n·β` fitted on relative error). The rates are effective: Python and
kernel overheads are folded into them, so per-call overheads are assumed to shrink with `P`
like the work does — the main source of error at small `T` and large `P`.
"""


@dataclass(frozen=True)
class Rates:
    """Per-core compute rates (FLOP/s) and per-node memory bandwidth (bytes/s), effective."""

    f_mm: float  # matmul FLOP/s per core (prefill GEMMs, lm_head)
    f_att: float  # attention FLOP/s per core
    f_dec: float  # decode matmul (GEMV) FLOP/s per core
    bandwidth: float  # bytes/s per node


@dataclass(frozen=True)
class Network:
    alpha: float  # s per message
    beta: float  # s per byte


@dataclass(frozen=True)
class Placement:
    """How P ranks sit on nodes: R ranks on each of `nodes` nodes, c cores per rank."""

    nranks: int
    ranks_per_node: int
    nodes: int
    cores_per_rank: float


def local_placement(nranks: int, cores: int, threads_per_rank: int) -> Placement:
    """All ranks on this one machine; oversubscribed ranks time-share the cores."""
    return Placement(nranks, nranks, 1, min(float(threads_per_rank), cores / nranks))


def cluster_placement(nranks: int, cores_per_node: int, ranks_per_node: int) -> Placement:
    R = min(nranks, ranks_per_node)
    return Placement(nranks, R, math.ceil(nranks / R), cores_per_node / R)


# --------------------------------------------------------------------------- collectives


def _lg(P: int) -> int:
    return math.ceil(math.log2(P)) if P > 1 else 0


def t_allreduce(nbytes: float, P: int, net: Network) -> float:
    return 0.0 if P < 2 else 2 * _lg(P) * net.alpha + 2 * (P - 1) / P * nbytes * net.beta


def t_allgather(nbytes: float, P: int, net: Network) -> float:
    """`nbytes` = size of the gathered result."""
    return 0.0 if P < 2 else _lg(P) * net.alpha + (P - 1) / P * nbytes * net.beta


def t_bcast(nbytes: float, P: int, net: Network) -> float:
    return 0.0 if P < 2 else _lg(P) * (net.alpha + nbytes * net.beta)


# --------------------------------------------------------------------------- work per rank


def why_not(cfg: Qwen3Config, strategy: str, P: int, T: int) -> str | None:
    """None if the engine can run `strategy` at P ranks with a T-token prompt, else the reason."""
    engine_strategy, _ = ENGINE_LAYOUTS.get(strategy, (strategy, None))
    return partition.why_not(cfg, engine_strategy, P, T)


def sequence_blocks(T: int, P: int, zigzag: bool) -> list[tuple[int, int]]:
    """(tokens, causal pairs) of each rank's prompt positions: contiguous blocks or zig-zag chunks."""
    out = []
    for r in range(P):
        chunks = partition.prompt_chunks("sequence", T, P, r, "zigzag" if zigzag else "contiguous")
        pairs = sum((c.stop * (c.stop + 1) - c.start * (c.start + 1)) // 2 for c in chunks)  # sum of t + 1
        out.append((sum(len(c) for c in chunks), pairs))
    return out


def phase_time(cfg: Qwen3Config, strategy: str, phase: str, T: int, place: Placement, rates: Rates,
               net: Network, dtype_bytes: float, context: int = 0) -> dict:
    """Predicted seconds of one prefill of T tokens, or one decode step over `context`+1 keys.

    Returns {"total_s", "flop_s", "memory_s", "comm_s", "bound"} of the slowest rank.
    """
    L, d, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    M, P, b = layer_matmul_params(cfg), place.nranks, dtype_bytes
    att_per_pair = 4 * L * H * D
    head = 2 * d * V / P  # vocabulary-parallel lm_head, last position only
    layer_bytes = model_bytes(cfg, b) - b * V * d  # layer weights + norms (+ an embedding row)
    head_bytes = b * V * d
    prefill = phase == "prefill"
    S = context + 1  # keys a decode step attends over
    kv = 2 * L * Hkv * D * KV_BYTES  # bytes of K and V per cached position
    ranks: list[tuple[float, float, float]] = []  # per rank: (matmul FLOPs, attention FLOPs, bytes)
    if strategy == "headwise":
        if prefill:
            ranks.append((2 * L * M * T / P + head, att_per_pair * attention_pairs(T) / P,
                          (layer_bytes + head_bytes) / P))
        else:
            ranks.append((2 * L * M / P + head, att_per_pair * S / P,
                          (layer_bytes + head_bytes) / P + kv * S / P))
        comm = (2 * L * t_allreduce(4 * (T if prefill else 1) * d, P, net) + t_allgather(4 * V, P, net))
    elif strategy in ("sequence", "sequence_zigzag"):
        if prefill:
            for tokens, pairs in sequence_blocks(T, P, strategy == "sequence_zigzag"):
                ranks.append((2 * L * M * tokens + head, att_per_pair * pairs,
                              layer_bytes + head_bytes / P))
            comm = (2 * L * t_allgather(4 * T * Hkv * D, P, net) + t_bcast(4 * d, P, net)
                    + t_allgather(4 * V, P, net))
        else:
            S_r = math.ceil(S / P)  # round-robin cache: the fullest rank
            ranks.append((2 * L * M + head, att_per_pair * S_r, layer_bytes + head_bytes / P + kv * S_r))
            comm = L * t_allgather(P * 4 * (H * D + 2 * H), P, net) + t_allgather(4 * V, P, net)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    c, bw = place.cores_per_rank, rates.bandwidth / place.ranks_per_node
    f_mm = rates.f_mm if prefill else rates.f_dec
    worst = max(ranks, key=lambda w: max(w[0] / (c * f_mm) + w[1] / (c * rates.f_att), w[2] / bw))
    flop_s = worst[0] / (c * f_mm) + worst[1] / (c * rates.f_att)
    memory_s = worst[2] / bw
    return {"total_s": max(flop_s, memory_s) + comm, "flop_s": flop_s, "memory_s": memory_s,
            "comm_s": comm, "bound": "compute" if flop_s >= memory_s else "memory"}


def predict(cfg: Qwen3Config, strategy: str, P: int, prompt_len: int, place: Placement, rates: Rates,
            net: Network, dtype_bytes: float, gen_len: int = 1) -> dict:
    """Prefill tok/s of the prompt and decode tok/s over `gen_len` steps after it.

    "prefill" and "decode" hold the times of the phase (decode: all gen_len steps summed, and
    "step_s" their mean), split into FLOP, memory and communication terms.
    """
    pre = phase_time(cfg, strategy, "prefill", prompt_len, place, rates, net, dtype_bytes)
    steps = [phase_time(cfg, strategy, "decode", 1, place, rates, net, dtype_bytes, prompt_len + i)
             for i in range(gen_len)]
    decode = {k: sum(s[k] for s in steps) for k in ("total_s", "flop_s", "memory_s", "comm_s")}
    decode["bound"] = steps[-1]["bound"]
    decode["step_s"] = decode["total_s"] / gen_len
    return {"prefill_tok_s": prompt_len / pre["total_s"], "prefill": pre,
            "decode_tok_s": gen_len / decode["total_s"], "decode": decode}


# --------------------------------------------------------------------------- calibration


def fit_prefill_rates(cells: list[tuple[float, float, float, float]]) -> tuple[float, float, str]:
    """(f_mm, f_att, how) per core from P=1 prefills given as (W_mm, W_att, seconds, cores).

    t·c = W_mm/f_mm + W_att/f_att, least squares on relative error when the cells' attention
    shares differ by MIN_SHARE_SPREAD or more; otherwise (or if that fit is not positive) one
    rate for both, fitted the same way.
    """
    A = np.array([[w_mm / (t * c), w_att / (t * c)] for w_mm, w_att, t, c in cells])  # (cells, 2)
    shares = A[:, 1] / A.sum(axis=1)  # attention's share of each cell's FLOPs
    # Two rates only when the attention share differs enough between cells (e.g. 128 vs 4096
    # tokens): 1.6% vs 6% (128 vs 512 for 0.6B) would let timing noise decide the attention rate.
    if shares.max() - shares.min() >= MIN_SHARE_SPREAD:
        (x, y), *_ = np.linalg.lstsq(A, np.ones(len(cells)), rcond=None)  # x = 1/f_mm, y = 1/f_att
        if x > 0 and y > 0:
            return 1 / x, 1 / y, "two rates (matmul, attention) fitted over prompt lengths"
    s = A.sum(axis=1)  # per cell: (W_mm + W_att) / (t c) = the single rate that fits it exactly
    x = float(np.sum(s) / np.sum(s * s))  # relative least squares for one 1/f
    return 1 / x, 1 / x, "one rate (single prompt length: attention at the matmul rate)"


def dtype_bytes_of(run: dict) -> int:
    name = run["model"].get("dtype", "float32")
    if name not in DTYPE_BYTES:
        raise ValueError(f"{run.get('_path', 'run')}: unknown model dtype {name!r}")
    return DTYPE_BYTES[name]


def calibrate(cfg: Qwen3Config, runs: list[dict]) -> dict[str, dict]:
    """Rates per attention algorithm from the single-rank cells (every algorithm gets a calibration:
    one without its own P=1 cells borrows another's). Returns {algo: calibration record}."""
    singles = [r for r in runs if r["cell"]["nranks"] == 1]
    if not singles:
        raise ValueError("no single-rank (nranks=1) cells to calibrate from")
    per_algo: dict[str, dict] = {}
    for algo in sorted({r["cell"]["attention_algo"] for r in singles}):
        cells = [r for r in singles if r["cell"]["attention_algo"] == algo]
        per_algo[algo] = _calibrate_cells(cfg, cells)
    for algo in sorted({r["cell"]["attention_algo"] for r in runs}):
        if algo not in per_algo:
            donor = sorted(per_algo)[0]
            per_algo[algo] = {**per_algo[donor], "borrowed_from": donor}
    return per_algo


def _cores(run: dict) -> tuple[int, float]:
    cores = int(run["environment"].get("cores", run["cell"]["threads_per_rank"]))
    place = local_placement(run["cell"]["nranks"], cores, run["cell"]["threads_per_rank"])
    return cores, place.cores_per_rank


def _calibrate_cells(cfg: Qwen3Config, cells: list[dict]) -> dict:
    b = dtype_bytes_of(cells[0])
    L, H, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    M = layer_matmul_params(cfg)
    prefill_points = []
    for r in cells:
        T = r["cell"]["prompt_len"]
        _, c = _cores(r)
        w_mm = 2 * L * M * T + 2 * cfg.hidden_size * cfg.vocab_size
        prefill_points.append((w_mm, 4 * L * H * D * attention_pairs(T), r["prefill"]["median_s"], c))
    f_mm, f_att, how = fit_prefill_rates(prefill_points)
    # Decode: bandwidth = bytes / time of each cell (median over cells): decode is memory bound.
    bandwidth = statistics.median(
        sum(model_bytes(cfg, b, r["cell"]["prompt_len"] + i + 1) for i in range(r["cell"]["gen_len"]))
        / r["decode"]["median_s"] for r in cells)
    # f_dec: the decode GEMV rate, at least f_mm and high enough that no calibration step's FLOP
    # time exceeds its memory time; then the memory term alone reproduces the measured decode.
    f_dec = f_mm
    w_dec = 2 * L * M + 2 * cfg.hidden_size * cfg.vocab_size
    for r in cells:
        _, c = _cores(r)
        for i in range(r["cell"]["gen_len"]):
            S = r["cell"]["prompt_len"] + i + 1
            room = c * model_bytes(cfg, b, S) / bandwidth - 4 * L * H * D * S / f_att
            if room > 0:
                f_dec = max(f_dec, w_dec / room)
    cores = max(_cores(r)[0] for r in cells)
    rates = Rates(f_mm=f_mm, f_att=f_att, f_dec=f_dec, bandwidth=bandwidth)
    checks = []
    for r in cells:  # the prefill must not be memory bound at the calibrated bandwidth
        mem = model_bytes(cfg, b) / rates.bandwidth
        if mem > r["prefill"]["median_s"]:
            checks.append(f"prefill of {r['cell']['prompt_len']} tokens measured "
                          f"{r['prefill']['median_s']:.4g} s, "
                          f"less than reading the weights once at the decode bandwidth ({mem:.4g} s): "
                          f"weights cached? the prefill prediction of this cell will be too slow")
    return {"rates": dataclasses.asdict(rates), "gflops_per_core": f_mm / 1e9,
            "attn_gflops_per_core": f_att / 1e9, "decode_gflops_per_core": rates.f_dec / 1e9,
            "mem_gb_s_per_node": rates.bandwidth / 1e9, "cores_per_node": cores, "prefill_fit": how,
            "cells": [CellId.of_run(r).name for r in cells], "checks": checks}


# --------------------------------------------------------------------------- comm.json


def network_from_comm(comm: dict | None) -> tuple[Network, dict]:
    """Intra-node (alpha, beta): the Allreduce sweep's (the collective the engine uses most),
    else the ping-pong's, else ASSUMED_INTRA."""
    if comm and comm.get("allreduce"):
        ar = comm["allreduce"]
        return Network(ar["alpha_s"], ar["beta_s_per_byte"]), {
            "source": f"allreduce sweep at P={comm['nranks']}", "alpha_s": ar["alpha_s"],
            "beta_s_per_byte": ar["beta_s_per_byte"]}
    if comm and comm.get("pingpong"):
        pp = comm["pingpong"]
        return Network(pp["alpha_s"], pp["beta_s_per_byte"]), {
            "source": "ping-pong", "alpha_s": pp["alpha_s"], "beta_s_per_byte": pp["beta_s_per_byte"]}
    alpha, beta = ASSUMED_INTRA
    return Network(alpha, beta), {"source": "assumed (no comm.json measurement)", "alpha_s": alpha,
                                  "beta_s_per_byte": beta}


# --------------------------------------------------------------------------- cluster config

CLUSTER_KEYS = {
    "name": "label of the cluster in the report",
    "cores_per_node": "cores of one node (default: this machine's)",
    "ranks_per_node": "MPI ranks per node (default 1: a rank uses the whole node and its bandwidth)",
    "gflops_per_core": "effective matmul GFLOP/s per core (default: calibrated here; the attention and "
                       "decode rates scale with it)",
    "mem_gb_s_per_node": "effective streaming bandwidth of a node, GB/s (default: calibrated here)",
    "net_alpha_s": f"network latency per message, s (default {DEFAULT_NET_ALPHA_S})",
    "net_bandwidth_gb_s": f"network bandwidth per link, GB/s (default {DEFAULT_NET_BANDWIDTH_GB_S})",
}


def parse_cluster(items: list[str]) -> dict:
    """key=value pairs (keys in CLUSTER_KEYS), or a JSON/YAML file of them; later items win."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            path = Path(item)
            if not path.is_file():
                raise ValueError(f"--cluster {item!r}: neither key=value nor a file")
            import yaml  # JSON is YAML too

            loaded = yaml.safe_load(path.read_text()) or {}
            out.update(loaded.get("cluster", loaded))
            continue
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    unknown = set(out) - set(CLUSTER_KEYS)
    if unknown:
        raise ValueError(f"--cluster: unknown keys {sorted(unknown)}; known: {sorted(CLUSTER_KEYS)}")
    for key in out:
        if key != "name":
            out[key] = float(out[key])
            if out[key] <= 0:
                raise ValueError(f"--cluster {key} must be positive")
    return out


def cluster_machine(cluster: dict, cal: dict, intra: Network) -> tuple[dict, Rates, Network, Network]:
    """The cluster's description (with defaults filled in), its rates and its two networks."""
    rates = Rates(**cal["rates"])
    scale = 1.0
    if "gflops_per_core" in cluster:
        scale = cluster["gflops_per_core"] * 1e9 / rates.f_mm
    bandwidth = cluster.get("mem_gb_s_per_node", rates.bandwidth / 1e9) * 1e9
    rates = Rates(rates.f_mm * scale, rates.f_att * scale, rates.f_dec * scale, bandwidth)
    desc = {"name": cluster.get("name", "nodes like this machine, 100 Gb/s network"),
            "cores_per_node": int(cluster.get("cores_per_node", cal["cores_per_node"])),
            "ranks_per_node": int(cluster.get("ranks_per_node", 1)),
            "gflops_per_core": rates.f_mm / 1e9, "mem_gb_s_per_node": bandwidth / 1e9,
            "net_alpha_s": cluster.get("net_alpha_s", DEFAULT_NET_ALPHA_S),
            "net_bandwidth_gb_s": cluster.get("net_bandwidth_gb_s", DEFAULT_NET_BANDWIDTH_GB_S),
            "intra_alpha_s": intra.alpha, "intra_beta_s_per_byte": intra.beta,
            "from_config": sorted(k for k in cluster if k != "name")}
    inter = Network(desc["net_alpha_s"], 1 / (desc["net_bandwidth_gb_s"] * 1e9))
    return desc, rates, intra, inter


# --------------------------------------------------------------------------- the whole model


def group_runs(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by (model config, stored dtype), the largest group first."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        key = json.dumps([r["model"]["config"], r["model"].get("dtype", "float32")], sort_keys=True)
        groups.setdefault(key, []).append(r)
    return sorted(groups.values(), key=len, reverse=True)


def _pct(pred: float, meas: float) -> float:
    return 100.0 * (pred / meas - 1.0)


def engine_strategy(cell: dict) -> str:
    """The cost model's strategy for a measured cell (the sequence layout decides which)."""
    if cell["parallel_strategy"] == "sequence" and cell.get("sequence_layout", "contiguous") == "zigzag":
        return "sequence_zigzag"
    return cell["parallel_strategy"]


def measured_cell(cfg: Qwen3Config, run: dict, cal: dict, intra: Network, dtype_bytes: float) -> dict:
    """One bench cell beside the model's prediction of it (intra-node network, this machine)."""
    c, name = run["cell"], CellId.of_run(run).name
    cores, _ = _cores(run)
    place = local_placement(c["nranks"], cores, c["threads_per_rank"])
    rates = Rates(**cal[c["attention_algo"]]["rates"])
    p = predict(cfg, engine_strategy(c), c["nranks"], c["prompt_len"], place, rates, intra, dtype_bytes,
                gen_len=c["gen_len"])
    meas_pre, meas_dec = run["prefill"]["tokens_per_s"], run["decode"]["tokens_per_s"]
    return {
        "cell": name, "parallel_strategy": c["parallel_strategy"],
        "attention_algo": c["attention_algo"], "nranks": c["nranks"], "prompt_len": c["prompt_len"],
        "gen_len": c["gen_len"], "threads_per_rank": c["threads_per_rank"],
        "oversubscribed": bool(run["environment"].get("oversubscribed", False)),
        "calibration_cell": name in cal[c["attention_algo"]]["cells"],
        "measured_prefill_tok_s": meas_pre, "predicted_prefill_tok_s": p["prefill_tok_s"],
        "prefill_error_pct": _pct(p["prefill_tok_s"], meas_pre),
        "measured_decode_tok_s": meas_dec, "predicted_decode_tok_s": p["decode_tok_s"],
        "decode_error_pct": _pct(p["decode_tok_s"], meas_dec),
        "measured_prefill_comm_s": run["prefill"].get("comm_s"),
        "predicted_prefill_comm_s": p["prefill"]["comm_s"],
        "measured_decode_comm_s": run["decode"].get("comm_s"),
        "predicted_decode_comm_s": p["decode"]["comm_s"],
        "predicted_prefill_bound": p["prefill"]["bound"], "predicted_decode_bound": p["decode"]["bound"],
    }


def predicted_curves(cfg: Qwen3Config, cal: dict, cluster: dict, intra: Network, dtype_bytes: float,
                     ranks: list[int], prompt_lens: list[int]) -> list[dict]:
    """tok/s per (algorithm, strategy, T, P) on the cluster; the layouts that cannot run say why."""
    desc, _, _, _ = cluster_machine(cluster, cal[sorted(cal)[0]], intra)
    curves = []
    for algo in sorted(cal):
        _, rates, intra_net, inter = cluster_machine(cluster, cal[algo], intra)
        for strategy in STRATEGIES:
            for T in prompt_lens:
                for P in ranks:
                    place = cluster_placement(P, desc["cores_per_node"], desc["ranks_per_node"])
                    row = {"strategy": strategy, "attention_algo": algo, "nranks": P, "prompt_len": T,
                           "nodes": place.nodes}
                    reason = why_not(cfg, strategy, P, T)
                    if reason:
                        curves.append({**row, "feasible": False, "reason": reason})
                        continue
                    net = intra_net if place.nodes == 1 else inter
                    p = predict(cfg, strategy, P, T, place, rates, net, dtype_bytes)
                    curves.append({**row, "feasible": True, "prefill_tok_s": p["prefill_tok_s"],
                                   "decode_tok_s": p["decode_tok_s"],
                                   "prefill": p["prefill"], "decode": p["decode"]})
    return curves


def model_group(runs: list[dict], intra: Network, intra_info: dict, cluster: dict,
                ranks: list[int], prompt_lens: list[int]) -> dict:
    """The cost model of one (model config, dtype) group: calibration, cells, error, curves."""
    cfg = Qwen3Config.from_dict({**runs[0]["model"]["config"], "model_type": "qwen3"})
    b = dtype_bytes_of(runs[0])
    cal = calibrate(cfg, runs)
    order = sorted(runs, key=lambda r: (r["cell"]["parallel_strategy"], r["cell"]["attention_algo"],
                                        r["cell"]["prompt_len"], r["cell"]["nranks"]))
    cells = [measured_cell(cfg, r, cal, intra, b) for r in order]
    held_out = [x for x in cells if not x["calibration_cell"]]
    error = {"cells": len(cells), "held_out_cells": len(held_out)}
    for phase in ("prefill", "decode"):
        errs = [abs(x[f"{phase}_error_pct"]) for x in held_out]
        error[f"{phase}_mean_abs_error_pct"] = statistics.fmean(errs) if errs else None
        error[f"{phase}_max_abs_error_pct"] = max(errs) if errs else None
    calibration = {algo: {k: v for k, v in c.items() if k != "rates"} for algo, c in cal.items()}
    desc, _, _, _ = cluster_machine(cluster, cal[sorted(cal)[0]], intra)
    return {"model": {"config": cfg.to_dict(), "dtype": runs[0]["model"].get("dtype", "float32"),
                      "dtype_bytes": b},
            "calibration": calibration, "intra_node": intra_info, "cells": cells, "error": error,
            "cluster": desc, "curves": predicted_curves(cfg, cal, cluster, intra, b, ranks, prompt_lens)}


def build(runs: list[dict], comm: dict | None, cluster: dict | None = None,
          ranks: list[int] | None = None, prompt_lens: list[int] | None = None) -> dict:
    """The whole cost-model record from bench results (and comm.json); see the module docstring."""
    if not runs:
        raise ValueError("no bench results given")
    intra, intra_info = network_from_comm(comm)
    groups, skipped = [], []
    for g in group_runs(runs):
        try:
            groups.append(model_group(g, intra, intra_info, cluster or {}, ranks or DEFAULT_RANKS,
                                      prompt_lens or DEFAULT_PROMPT_LENS))
        except ValueError as e:  # e.g. a bf16 group without a single-rank cell: say so, go on
            skipped.append({"config": g[0]["model"]["config"], "dtype": g[0]["model"].get("dtype"),
                            "cells": [CellId.of_run(r).name for r in g], "reason": str(e)})
    if not groups:
        raise ValueError("; ".join(s["reason"] for s in skipped))
    return {"schema_version": SCHEMA_VERSION, "equations_md": EQUATIONS_MD.strip(), "skipped": skipped,
            "strategies": {"headwise": "head-wise tensor parallel (engine)",
                           "sequence": "sequence parallel, contiguous token blocks (engine)",
                           "sequence_zigzag": "sequence parallel with zig-zag 2P-chunk balance (predicted)"},
            "groups": groups}


def load_json(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from None
    return data


def main(argv: list[str] | None = None) -> int:
    keys = "; ".join(f"{k}: {v}" for k, v in CLUSTER_KEYS.items())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog=f"cluster keys: {keys}")
    p.add_argument("--runs", nargs="+", required=True, help="bench result JSONs (results/runs/*.json)")
    p.add_argument("--comm", help="pipeline.study.commbench result (intra-node alpha/beta)")
    p.add_argument("--cluster", nargs="*", default=[], metavar="KEY=VALUE|FILE",
                   help="the cluster to extrapolate to (see the keys below)")
    p.add_argument("--ranks", nargs="+", type=int, default=DEFAULT_RANKS)
    p.add_argument("--prompt-lens", nargs="+", type=int, default=DEFAULT_PROMPT_LENS)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        runs = []
        for path in args.runs:
            run = load_json(path)
            run["_path"] = str(path)
            runs.append(run)
        comm = load_json(args.comm) if args.comm and Path(args.comm).exists() else None
        result = build(runs, comm, parse_cluster(args.cluster), args.ranks, args.prompt_lens)
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in runs:
        r.pop("_path", None)
    write_json_atomic(args.out, result)
    for g in result["groups"]:
        e = g["error"]
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}%"  # noqa: E731
        print(f"costmodel: {g['model']['config']['num_hidden_layers']}-layer model ({g['model']['dtype']}): "
              f"{e['cells']} cells, {e['held_out_cells']} held out; mean |error| prefill "
              f"{fmt(e['prefill_mean_abs_error_pct'])}, decode {fmt(e['decode_mean_abs_error_pct'])}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
