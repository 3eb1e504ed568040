"""Calibration: compute rates and bandwidth from the single-rank cells, the fixed cost per step and
per layer from a tiny model's decode, the engine's own cost per collective in situ."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np

from model_export.config import Qwen3Config
from pipeline.cells import CellId
from pipeline.study.costmodel.network import Network, comm_time
from pipeline.study.costmodel.work import FixedCost, Rates, local_placement
from pipeline.study.roofline import attention_pairs, layer_matmul_params, model_bytes

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MIN_SHARE_SPREAD = 0.1  # attention FLOP share difference needed to fit a separate attention rate


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
    """Bytes per weight element of a run's export (its manifest dtype, as bench records it)."""
    name = run["model"].get("dtype", "float32")
    if name == "int8":  # build() lists the group as not modelled with this reason and goes on
        raise ValueError("int8 weights: bytes per weight not modelled (int8 matrices with a float32 "
                         "scale per output channel and a bf16 embedding)")
    if name not in DTYPE_BYTES:
        raise ValueError(f"{run.get('_path', 'run')}: unknown model dtype {name!r}")
    return DTYPE_BYTES[name]


def cores_of(run: dict) -> tuple[int, float]:
    """(cores of the machine, cores per rank) of a bench run."""
    cores = int(run["environment"].get("cores", run["cell"]["threads_per_rank"]))
    place = local_placement(run["cell"]["nranks"], cores, run["cell"]["threads_per_rank"])
    return cores, place.cores_per_rank


def beyond_weights(run: dict) -> float:
    """A tiny-model decode step less the read of its weights measured beside it (older records
    have none): the cost model charges bytes through the bandwidth term, so the fixed term is what
    a step pays beyond them."""
    return max(0.0, run["decode_step_s"] - run.get("weights_read_step_s", 0.0))


def fixed_cost(overhead: dict | None) -> tuple[FixedCost, dict]:
    """Per-step and per-layer cost from the tiny model's decode at P=1 at two depths (netcal's
    `overhead`), beyond reading its weights: the step time is a line in the layer count. None: no
    fixed term (old model)."""
    runs = [r for r in (overhead or {}).get("runs", []) if r["nranks"] == 1]
    depths = sorted({r["layers"] for r in runs})
    if len(depths) < 2:
        return FixedCost(), {"source": "none (no tiny-model decode measured)", "step_s": 0.0, "layer_s": 0.0}
    step = {L: statistics.median(beyond_weights(r) for r in runs if r["layers"] == L) for L in depths}
    measured = {L: statistics.median(r["decode_step_s"] for r in runs if r["layers"] == L) for L in depths}
    read = {L: statistics.median(r.get("weights_read_step_s", 0.0) for r in runs if r["layers"] == L)
            for L in depths}
    lo, hi = depths[0], depths[-1]
    layer_s = max(0.0, (step[hi] - step[lo]) / (hi - lo))
    step_s = max(0.0, step[lo] - lo * layer_s)
    return FixedCost(step_s, layer_s), {
        "source": f"decode of the {overhead.get('preset')} preset at {lo} and {hi} layers, 1 rank",
        "step_s": step_s, "layer_s": layer_s, "measured_step_s": {str(k): v for k, v in measured.items()},
        "weights_read_s": {str(k): v for k, v in read.items()},
        "weights_bytes": {str(L): max(r.get("weights_bytes", 0) for r in runs if r["layers"] == L)
                          for L in depths}}


def per_call_cost(overhead: dict | None, cfg_tiny_calls: int, net: Network) -> float:
    """The engine's cost per collective beyond the sweep's: the tiny model's decode step at P=2
    minus its step at P=1 (each beyond its weights' read: a rank reads half at P=2) and minus the
    sweep's prediction of its collectives, per call.

    `cfg_tiny_calls` is the tiny model's collectives per decode step (2 per layer + the logits).
    """
    runs = (overhead or {}).get("runs", [])
    deep = max((r["layers"] for r in runs), default=0)
    one = [beyond_weights(r) for r in runs if r["layers"] == deep and r["nranks"] == 1]
    two = [beyond_weights(r) for r in runs if r["layers"] == deep and r["nranks"] == 2]
    if not (one and two and cfg_tiny_calls):
        return 0.0
    hidden, vocab = 64, 512  # the tiny preset's (pipeline.study.netcal.TINY_PRESET)
    sweep = comm_time([("allreduce", 4 * hidden, 2 * deep), ("allgather", 4 * vocab, 1)], 2, net)
    return max(0.0, (statistics.median(two) - statistics.median(one) - sweep) / cfg_tiny_calls)


def calibrate(cfg: Qwen3Config, runs: list[dict], fixed: FixedCost | None = None) -> dict[str, dict]:
    """Rates per attention algorithm from the single-rank cells (every algorithm gets a calibration:
    one without its own P=1 cells borrows another's). Returns {algo: calibration record}."""
    singles = [r for r in runs if r["cell"]["nranks"] == 1]
    if not singles:
        raise ValueError("no single-rank (nranks=1) cells to calibrate from")
    per_algo: dict[str, dict] = {}
    for algo in sorted({r["cell"]["attention_algo"] for r in singles}):
        cells = [r for r in singles if r["cell"]["attention_algo"] == algo]
        per_algo[algo] = calibrate_cells(cfg, cells, fixed or FixedCost())
    for algo in sorted({r["cell"]["attention_algo"] for r in runs}):
        if algo not in per_algo:
            donor = sorted(per_algo)[0]
            per_algo[algo] = {**per_algo[donor], "borrowed_from": donor}
    return per_algo


def calibrate_cells(cfg: Qwen3Config, cells: list[dict], fixed: FixedCost) -> dict:
    """One algorithm's rates from its P=1 cells, the fixed cost taken out of every phase first."""
    b = dtype_bytes_of(cells[0])
    L, H, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    M, step_fixed = layer_matmul_params(cfg), fixed.of(cfg.num_hidden_layers)
    # Decode: bandwidth = bytes / time of each cell (median over cells): decode is memory bound.
    # A cell on fewer cores than the node's is scaled up to the node: the streaming rate grows with
    # the cores on these VMs (2 one-thread ranks stream what 1 two-thread rank does,
    # docs/design-notes.md#network-calibration); work.Placement.bandwidth_share scales it back.
    bandwidth = statistics.median(
        sum(model_bytes(cfg, b, r["cell"]["prompt_len"] + i + 1) for i in range(r["cell"]["gen_len"]))
        / max(r["decode"]["median_s"] - r["cell"]["gen_len"] * step_fixed, 1e-9)
        * cores_of(r)[0] / cores_of(r)[1] for r in cells)
    prefill_points = []
    for r in cells:
        T = r["cell"]["prompt_len"]
        cores, c = cores_of(r)
        w_mm = 2 * L * M * T + 2 * cfg.hidden_size * cfg.vocab_size
        # the prefill's one read of the weights is not hidden under its GEMMs (work._overlap)
        read = model_bytes(cfg, b) / (bandwidth * c / cores)
        t = max(r["prefill"]["median_s"] - step_fixed - read, 0.1 * r["prefill"]["median_s"])
        prefill_points.append((w_mm, 4 * L * H * D * attention_pairs(T), t, c))
    f_mm, f_att, how = fit_prefill_rates(prefill_points)
    # f_dec: the decode GEMV rate, at least f_mm and high enough that no calibration step's FLOP
    # time exceeds its memory time; then the memory term alone reproduces the measured decode.
    # In core-seconds: W_dec/f_dec + W_att/f_att <= c * Q/(B c/C) = C Q / B.
    f_dec = f_mm
    w_dec = 2 * L * M + 2 * cfg.hidden_size * cfg.vocab_size
    for r in cells:
        cores, _ = cores_of(r)
        for i in range(r["cell"]["gen_len"]):
            S = r["cell"]["prompt_len"] + i + 1
            room = cores * model_bytes(cfg, b, S) / bandwidth - 4 * L * H * D * S / f_att
            if room > 0:
                f_dec = max(f_dec, w_dec / room)
    cores = max(cores_of(r)[0] for r in cells)
    rates = Rates(f_mm=f_mm, f_att=f_att, f_dec=f_dec, bandwidth=bandwidth)
    checks = []
    for r in cells:  # the prefill must not be memory bound at the calibrated bandwidth
        mem = model_bytes(cfg, b) / (rates.bandwidth * cores_of(r)[1] / cores_of(r)[0])
        if mem > r["prefill"]["median_s"]:
            checks.append(f"prefill of {r['cell']['prompt_len']} tokens measured "
                          f"{r['prefill']['median_s']:.4g} s, "
                          f"less than reading the weights once at the decode bandwidth ({mem:.4g} s): "
                          f"weights cached? the prefill prediction of this cell will be too slow")
    return {"rates": dataclasses.asdict(rates), "gflops_per_core": f_mm / 1e9,
            "attn_gflops_per_core": f_att / 1e9, "decode_gflops_per_core": rates.f_dec / 1e9,
            "mem_gb_s_per_node": rates.bandwidth / 1e9, "cores_per_node": cores, "prefill_fit": how,
            "cells": [CellId.of_run(r).name for r in cells], "checks": checks}
