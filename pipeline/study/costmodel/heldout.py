"""Measured cells beside their predictions: the matrix's (shared memory) and the held-out cells of
pipeline.study.netcal, run on shared memory and across emulated nodes at each link speed."""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics

import numpy as np

from model_export.config import Qwen3Config
from pipeline.cells import CellId
from pipeline.study.costmodel.calibrate import calibrate, cores_of, fixed_cost, per_call_cost
from pipeline.study.costmodel.network import SIZE_CLASSES, Network, class_counts, comm_time, network_from_comm
from pipeline.study.costmodel.work import LAYOUTS, FixedCost, Rates, family, local_placement, predict

PHASES = ("prefill", "decode")


def pct(pred: float, meas: float) -> float:
    return 100.0 * (pred / meas - 1.0)


def engine_strategy(cell: dict) -> str:
    """The cost model's layout for a measured cell (work.family)."""
    return family(cell)


def link_label(gbit: float | None) -> str:
    """The name of a network in the output: "shm", or an emulated link's "10 Gb/s"."""
    return "shm" if gbit is None else f"{gbit:g} Gb/s"


def measured_cell(cfg: Qwen3Config, run: dict, cal: dict, net: Network, dtype_bytes: float,
                  fixed: FixedCost | None = None, network: str = "shm", inter: Network | None = None,
                  link: str | None = None) -> dict:
    """One bench cell beside the model's prediction of it on `net`; when its ranks ran on more
    than one host (environment.hosts) the calls that span hosts run on `inter`, the network of
    the emulated link `link` ("10 Gb/s"), and the cell is labelled with that link.

    The ranks share this machine's cores whatever node they ran on: emulated nodes are network
    namespaces of one machine, so the placement is this machine's and only the network differs.
    """
    c, name = run["cell"], CellId.of_run(run).name
    cores, _ = cores_of(run)
    place = local_placement(c["nranks"], cores, c["threads_per_rank"])
    rates = Rates(**cal[c["attention_algo"]]["rates"])
    hosts = run["environment"].get("hosts") or []
    crossed = len(set(hosts)) > 1
    if crossed and link:
        network = link
    p = predict(cfg, engine_strategy(c), c["nranks"], c["prompt_len"], place, rates, net, dtype_bytes,
                gen_len=c["gen_len"], fixed=fixed, inter=inter if crossed else None, hosts=hosts)
    out = {"cell": name, "network": network, "parallel_strategy": c["parallel_strategy"],
           "attention_algo": c["attention_algo"], "nranks": c["nranks"], "prompt_len": c["prompt_len"],
           "gen_len": c["gen_len"], "threads_per_rank": c["threads_per_rank"], "hosts": hosts,
           "nodes": len(set(hosts)), "crossed_network": crossed,
           "predicted_on": network if not crossed or inter is not None else "shm (its link not calibrated)",
           "placement": [r.get("cpus") for r in (run.get("placement") or {}).get("ranks", [])],
           "oversubscribed": bool(run["environment"].get("oversubscribed", False)),
           "calibration_cell": name in cal[c["attention_algo"]]["cells"] and network == "shm"}
    for phase in PHASES:
        meas = run[phase]
        out.update({
            f"measured_{phase}_tok_s": meas["tokens_per_s"],
            f"predicted_{phase}_tok_s": p[f"{phase}_tok_s"],
            f"{phase}_error_pct": pct(p[f"{phase}_tok_s"], meas["tokens_per_s"]),
            f"measured_{phase}_comm_s": meas.get("comm_s"),
            f"measured_{phase}_transfer_s": meas.get("transfer_s"),
            f"measured_{phase}_wait_s": meas.get("wait_s"),
            f"measured_{phase}_compute_s": meas.get("compute_s"),
            f"predicted_{phase}_comm_s": p[phase]["comm_s"],
            f"predicted_{phase}_fixed_s": p[phase]["fixed_s"],
            f"predicted_{phase}_wait_s": p[phase]["wait_s"],
            f"predicted_{phase}_bound": p[phase]["bound"],
        })
    return out


def tiny_calls(overhead: dict | None) -> int:
    """Collectives per decode step of netcal's deeper tiny model under head-wise."""
    deep = max((r["layers"] for r in (overhead or {}).get("runs", [])), default=0)
    return 2 * deep + 1


def network_of(record: dict) -> tuple[Network, dict]:
    """A netcal record's network: its sweep's classes, and the engine's cost per call in situ."""
    base, _ = network_from_comm(record.get("comm"))
    per_call = per_call_cost(record.get("overhead"), tiny_calls(record.get("overhead")), base)
    return network_from_comm(record.get("comm"), per_call)


def label(record: dict) -> str:
    return link_label(None if record.get("link") == "shm" else record.get("link_gbit"))


def same_model(cfg: Qwen3Config, runs: list[dict], dtype: str) -> list[dict]:
    return [r for r in runs if r["model"].get("dtype", "float32") == dtype
            and Qwen3Config.from_dict({**r["model"]["config"], "model_type": "qwen3"}) == cfg]


def session_model(cfg: Qwen3Config, rec: dict, cal: dict, fixed: FixedCost,
                  dtype: str) -> tuple[dict, FixedCost, str]:
    """The calibration a record's cells are predicted with: its own session's fixed cost and
    single-rank cells when it measured them (the load of a shared machine drifts between
    sessions), else the matrix's."""
    rec_fixed, info = fixed_cost(rec.get("overhead"))
    if info["layer_s"] == 0 and info["step_s"] == 0:
        rec_fixed = fixed
    singles = same_model(cfg, rec.get("calibration", []), dtype)
    if singles:  # the other cells only so that every algorithm gets a calibration (borrowed)
        others = same_model(cfg, rec.get("comm_calibration", []) + rec.get("runs", []), dtype)
        return calibrate(cfg, singles + others, rec_fixed), rec_fixed, "this session's single-rank cells"
    return cal, rec_fixed, "the matrix's single-rank cells"


def nonnegative_lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin |A x - y| over x >= 0, for the few unknowns here: the best least-squares solution
    over every subset of columns left free (the others 0) whose solution is non-negative."""
    best, best_res = np.zeros(A.shape[1]), float(np.sum(y * y))
    for k in range(1, A.shape[1] + 1):
        for cols in itertools.combinations(range(A.shape[1]), k):
            x, *_ = np.linalg.lstsq(A[:, cols], y, rcond=None)
            res = float(np.sum((A[:, cols] @ x - y) ** 2))
            if np.all(x >= 0) and res < best_res - 1e-30:
                best, best_res = np.zeros(A.shape[1]), res
                best[list(cols)] = x
    return best


def in_situ(cfg: Qwen3Config, runs: list[dict], net: Network, b: float) -> dict | None:
    """The engine's cost inside MPI beyond the sweep's, per call and message-size class, and its
    waiting per call and per second of compute, from multi-rank cells that are not held out.

    Each phase of each cell gives one equation: its measured transfer minus the sweep's
    prediction of its collectives = sum over classes of (its calls of the class) x (the class's
    cost per call), and its waiting = calls x (waiting per call) + compute x (waiting per second);
    non-negative least squares; a class no call of these cells used takes the mean cost per call.
    None without such cells."""
    rows, excess, waits = [], [], []
    for run in runs:
        c = run["cell"]
        P, T, gen = c["nranks"], c["prompt_len"], c["gen_len"]
        strategy = LAYOUTS[engine_strategy(c)]
        for phase, calls, steps in (("prefill", strategy(cfg, P, T, 1, True, b).calls, 1),
                                    ("decode", strategy(cfg, P, T, T + 1, False, b).calls, gen)):
            counts = [steps * k for k in class_counts(calls, P)]
            if not sum(counts):
                continue
            rows.append(counts)
            excess.append((run[phase].get("transfer_s") or 0) - steps * comm_time(calls, P, net))
            waits.append((sum(counts), run[phase].get("compute_s") or 0, run[phase].get("wait_s") or 0))
    if not rows:
        return None
    A, y = np.array(rows), np.array(excess)  # (phases, classes), (phases,)
    mean = max(0.0, float(y.sum() / A.sum()))
    used = A.sum(axis=0) > 0
    per_class = np.full(len(SIZE_CLASSES), mean)
    per_class[used] = nonnegative_lstsq(A[:, used], y)
    W = np.array(waits)  # (phases, 3): calls, compute s, waiting s
    per_call_wait, fraction = nonnegative_lstsq(W[:, :2], W[:, 2])
    return {"per_call_s": mean, "wait_per_call_s": float(per_call_wait), "wait_fraction": float(fraction),
            "per_call_classes": tuple(zip(SIZE_CLASSES, map(float, per_class), strict=True))}


def rank_speeds(cfg: Qwen3Config, runs: list[dict], cal: dict, net: Network, b: float,
                fixed: FixedCost) -> list[tuple[int, float, float]]:
    """(P, prefill, decode) speed of a rank among P on this machine relative to a lone rank, per
    multi-rank cell that is not held out: predicted busy time (compute, memory, fixed) over
    measured compute time. Ranks sharing one machine's cores, caches and memory (and its other
    load) run slower than the calibration's lone rank; this measures by how much. Pipeline
    layouts are left out: a stage's measured compute is its own, the prediction the whole path."""
    out = []
    for run in runs:
        c = run["cell"]
        if engine_strategy(c).startswith("layer"):
            continue
        cores, _ = cores_of(run)
        p = predict(cfg, engine_strategy(c), c["nranks"], c["prompt_len"],
                    local_placement(c["nranks"], cores, c["threads_per_rank"]),
                    Rates(**cal[c["attention_algo"]]["rates"]), net, b, gen_len=c["gen_len"], fixed=fixed)
        busy = [p[ph]["total_s"] - p[ph]["comm_s"] - p[ph]["wait_s"] for ph in PHASES]
        measured = [run[ph].get("compute_s") for ph in PHASES]
        if all(measured):
            out.append((c["nranks"], busy[0] / measured[0], busy[1] / measured[1]))
    return out


def concurrency(samples: list[tuple[int, float, float]]) -> dict[int, tuple[float, float]]:
    """{P: (prefill, decode) rank speed}: the median of the samples at P. A rank's speed among
    others is the machine's, not the network's, so every session's samples count: one sample
    swings by x1.4 between runs minutes apart (head-wise P=2 decode on this machine)."""
    by_p: dict[int, list[tuple[float, float]]] = {}
    for P, pre, dec in samples:
        by_p.setdefault(P, []).append((pre, dec))
    return {P: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
            for P, rs in by_p.items()}


def slowed(cal: dict, speed: tuple[float, float]) -> dict:
    """The calibration with its rates scaled by a rank's measured speed among others."""
    pre, dec = speed
    out = {}
    for algo, c in cal.items():
        r = Rates(**c["rates"])
        out[algo] = {**c, "rates": dataclasses.asdict(Rates(r.f_mm * pre, r.f_att * pre, r.f_dec * dec,
                                                            r.bandwidth * dec))}
    return out


def record_network(cfg: Qwen3Config, rec: dict, b: float, dtype: str) -> tuple[Network, dict]:
    """A netcal record's network: its sweep, and the engine's costs in situ from its cells that
    are not held out (the tiny model's cost per call when it has none). Those cells may hold
    another weight dtype than `dtype`: the messages are float32 activations in every dtype."""
    net, info = network_of(rec)
    cells = [r for dt in dict.fromkeys((dtype, "float32"))
             for r in same_model(cfg, rec.get("comm_calibration", []), dt)]
    measured = in_situ(cfg, cells, dataclasses.replace(net, per_call=0.0), b)
    if measured:  # the real model's cells beat the tiny model's for the cost per call
        net = dataclasses.replace(net, per_call=measured["per_call_s"],
                                  wait_fraction=measured["wait_fraction"],
                                  wait_per_call=measured["wait_per_call_s"],
                                  per_call_classes=measured["per_call_classes"])
        info = {**info, "per_call_s": measured["per_call_s"], "wait_fraction": measured["wait_fraction"],
                "wait_per_call_s": measured["wait_per_call_s"],
                "per_call_classes": [{"up_to_bytes": None if math.isinf(u) else u, "per_call_s": x}
                                     for u, x in measured["per_call_classes"]],
                "per_call_from": [CellId.of_run(r).name for r in cells]}
    return net, info


def networks_of(cfg: Qwen3Config, records: list[dict], b: float,
                dtype: str = "float32") -> dict[str, Network]:
    """{"shm" | "10 Gb/s": network} of every measured netcal record."""
    return {label(rec): record_network(cfg, rec, b, dtype)[0] for rec in records if not rec.get("skipped")}


def network_cells(cfg: Qwen3Config, records: list[dict], cal: dict, b: float,
                  fixed: FixedCost, dtype: str = "float32") -> tuple[list, list]:
    """(cells, networks): every held-out cell of this model in the netcal records, predicted on
    its record's network; networks describe each record (or why it was skipped)."""
    sessions, samples, networks = [], [], []
    for rec in records:
        if rec.get("skipped"):
            networks.append({"network": label(rec), "skipped": rec["skipped"]})
            continue
        net, info = record_network(cfg, rec, b, dtype)
        rec_cal, rec_fixed, source = session_model(cfg, rec, cal, fixed, dtype)
        own = rank_speeds(cfg, same_model(cfg, rec.get("comm_calibration", []), dtype), rec_cal, net, b,
                          rec_fixed)
        samples += own
        sessions.append((rec, net, rec_cal, rec_fixed))
        networks.append({"network": label(rec), "skipped": None, "nodes": rec.get("nodes"),
                         "link_gbit": rec.get("link_gbit"), **info, "failed": rec.get("failed", []),
                         "calibrated_on": source, "fixed_step_s": rec_fixed.step_s,
                         "fixed_layer_s": rec_fixed.layer_s,
                         "rank_speed_samples": [{"nranks": P, "prefill": x, "decode": y} for P, x, y in own]})
    speeds = concurrency(samples)
    # calls inside one node run on shared memory (its session's network), those across on the link
    shm = next((net for rec, net, _c, _f in sessions if label(rec) == "shm"), None)
    for n in networks:
        if not n["skipped"]:
            n["rank_speed"] = {str(P): {"prefill": v[0], "decode": v[1]} for P, v in speeds.items()}
    cells = []
    for rec, net, rec_cal, rec_fixed in sessions:
        for run in same_model(cfg, rec.get("runs", []), dtype):
            speed = speeds.get(run["cell"]["nranks"])
            cells.append(measured_cell(cfg, run, slowed(rec_cal, speed) if speed else rec_cal, shm or net, b,
                                       rec_fixed, label(rec), inter=net, link=label(rec)))
    return cells, networks


def error_summary(cells: list[dict]) -> list[dict]:
    """Per network and phase over the held-out cells: mean and max |error|, and the ratio of the
    predicted communication term to the measured transfer time (inside MPI, all ranks arrived)."""
    out = []
    for network in sorted({c["network"] for c in cells}):
        held = [c for c in cells if c["network"] == network and not c["calibration_cell"]]
        for phase in PHASES:
            errs = [abs(c[f"{phase}_error_pct"]) for c in held]
            ratios = [c[f"predicted_{phase}_comm_s"] / c[f"measured_{phase}_transfer_s"] for c in held
                      if c["nranks"] > 1 and c.get(f"measured_{phase}_transfer_s")]
            out.append({"network": network, "phase": phase, "cells": len(held),
                        "mean_abs_error_pct": statistics.fmean(errs) if errs else None,
                        "max_abs_error_pct": max(errs) if errs else None,
                        "comm_over_transfer": ratios,
                        "comm_within_2x": all(0.5 <= r <= 2 for r in ratios) if ratios else None})
    return out
