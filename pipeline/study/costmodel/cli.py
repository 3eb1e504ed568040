"""The whole cost-model record and `python -m pipeline costmodel`."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from model_export.atomic import write_json_atomic
from model_export.config import Qwen3Config
from pipeline.cells import CellId
from pipeline.study.costmodel.calibrate import calibrate, dtype_bytes_of, fixed_cost
from pipeline.study.costmodel.equations import EQUATIONS_MD
from pipeline.study.costmodel.extrapolate import (
    CLUSTER_KEYS,
    cluster_machine,
    parse_cluster,
    predicted_curves,
)
from pipeline.study.costmodel.heldout import (
    PHASES,
    error_summary,
    link_label,
    measured_cell,
    network_cells,
    network_of,
    networks_of,
)
from pipeline.study.costmodel.network import Network, network_from_comm
from pipeline.study.costmodel.work import FixedCost

SCHEMA_VERSION = 2
DEFAULT_RANKS = [1, 2, 4, 8, 16, 32, 64]
DEFAULT_PROMPT_LENS = [128, 512, 1024, 2048, 4096, 8192, 16384, 32768]


def group_runs(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by (model config, stored dtype), the largest group first."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        key = json.dumps([r["model"]["config"], r["model"].get("dtype", "float32")], sort_keys=True)
        groups.setdefault(key, []).append(r)
    return sorted(groups.values(), key=len, reverse=True)


def model_group(runs: list[dict], intra: Network, intra_info: dict, cluster: dict, ranks: list[int],
                prompt_lens: list[int], records: list[dict] | None = None,
                fixed: FixedCost | None = None, link_gbit: float | None = None) -> dict:
    """The cost model of one (model config, dtype) group: calibration, cells, error, curves, and
    the netcal records' held-out cells on each network.

    The matrix's cells are predicted on the shared-memory session's network (sweep and in-situ
    costs); a cell whose ranks ran on several hosts (the matrix across the emulated cluster, link
    `link_gbit`) has its calls between hosts on that link's session network."""
    cfg = Qwen3Config.from_dict({**runs[0]["model"]["config"], "model_type": "qwen3"})
    b = dtype_bytes_of(runs[0])
    cal = calibrate(cfg, runs, fixed)
    order = sorted(runs, key=lambda r: (r["cell"]["parallel_strategy"], r["cell"]["attention_algo"],
                                        r["cell"]["prompt_len"], r["cell"]["nranks"]))
    nets = networks_of(cfg, records or [], b, runs[0]["model"].get("dtype", "float32"))
    link = emulated_label(link_gbit)
    cells = [measured_cell(cfg, r, cal, nets.get("shm", intra), b, fixed, inter=nets.get(link), link=link)
             for r in order]
    held_out = [x for x in cells if not x["calibration_cell"]]
    error = {"cells": len(cells), "held_out_cells": len(held_out)}
    for phase in PHASES:
        errs = [abs(x[f"{phase}_error_pct"]) for x in held_out]
        error[f"{phase}_mean_abs_error_pct"] = statistics.fmean(errs) if errs else None
        error[f"{phase}_max_abs_error_pct"] = max(errs) if errs else None
    net_cells, networks = network_cells(cfg, records or [], cal, b, fixed or FixedCost(),
                                        runs[0]["model"].get("dtype", "float32"))
    calibration = {algo: {k: v for k, v in c.items() if k != "rates"} for algo, c in cal.items()}
    desc, _, _, _ = cluster_machine(cluster, cal[sorted(cal)[0]], intra)
    return {"model": {"config": cfg.to_dict(), "dtype": runs[0]["model"].get("dtype", "float32"),
                      "dtype_bytes": b},
            "calibration": calibration, "intra_node": intra_info, "cells": cells, "error": error,
            "network": {"networks": networks, "cells": net_cells, "error": error_summary(net_cells)},
            "cluster": desc,
            "curves": predicted_curves(cfg, cal, cluster, intra, b, ranks, prompt_lens, fixed)}


def shm_record(records: list[dict]) -> dict | None:
    return next((r for r in records if r.get("link") == "shm" and not r.get("skipped")), None)


def emulated_label(link_gbit: float | None) -> str:
    """The network label of the matrix's cells that crossed the emulated cluster's links."""
    if link_gbit is None:
        return "emulated link (speed not given)"
    return link_label(link_gbit) if link_gbit > 0 else "uncapped emulated link"


def build(runs: list[dict], comm: dict | None, cluster: dict | None = None,
          ranks: list[int] | None = None, prompt_lens: list[int] | None = None,
          network: list[dict] | None = None, link_gbit: float | None = None) -> dict:
    """The whole cost-model record from bench results, comm.json and netcal records (`network`):
    the shared-memory record, when measured, gives the intra-node network and the fixed cost;
    `link_gbit` is the link of the emulated cluster the matrix ran across (its cells whose ranks
    ran on several hosts are predicted on that link's record)."""
    if not runs:
        raise ValueError("no bench results given")
    records = network or []
    shm = shm_record(records)
    fixed, fixed_info = fixed_cost((shm or {}).get("overhead"))
    intra, intra_info = network_of(shm) if shm else network_from_comm(comm)
    groups, skipped = [], []
    for g in group_runs(runs):
        try:
            groups.append(model_group(g, intra, intra_info, cluster or {}, ranks or DEFAULT_RANKS,
                                      prompt_lens or DEFAULT_PROMPT_LENS, records, fixed, link_gbit))
        except ValueError as e:  # e.g. a bf16 group without a single-rank cell: say so, go on
            skipped.append({"config": g[0]["model"]["config"], "dtype": g[0]["model"].get("dtype"),
                            "cells": [CellId.of_run(r).name for r in g], "reason": str(e)})
    if not groups:
        raise ValueError("; ".join(s["reason"] for s in skipped))
    return {"schema_version": SCHEMA_VERSION, "equations_md": EQUATIONS_MD.strip(), "skipped": skipped,
            "fixed_cost": fixed_info, "emulated_link_gbit": link_gbit,
            "strategies": {"headwise": "head-wise tensor parallel (engine)",
                           "sequence": "sequence parallel, contiguous token blocks (engine)",
                           "sequence_zigzag": "sequence parallel, zig-zag 2P-chunk balance (engine default)"},
            "groups": groups}


def load_json(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from None
    return data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    keys = "; ".join(f"{k}: {v}" for k, v in CLUSTER_KEYS.items())
    p = argparse.ArgumentParser(description="the alpha-beta cost model: calibrate on this machine, predict "
                                "held-out cells and a cluster", epilog=f"cluster keys: {keys}")
    p.add_argument("--runs", nargs="+", required=True, help="bench result JSONs (results/runs/*.json)")
    p.add_argument("--comm", help="pipeline.study.commbench result (intra-node alpha/beta)")
    p.add_argument("--network", nargs="*", default=[],
                   help="pipeline.study.netcal results (results/network/*.json): held-out cells per network")
    p.add_argument("--cluster", nargs="*", default=[], metavar="KEY=VALUE|FILE",
                   help="the cluster to extrapolate to (see the keys below)")
    p.add_argument("--emulated-link-gbit", type=float, default=None,
                   help="the matrix ran across the emulated cluster with links of this Gb/s (0 = "
                        "uncapped): its cells whose ranks ran on several hosts are predicted with that "
                        "link's netcal record")
    p.add_argument("--ranks", nargs="+", type=int, default=DEFAULT_RANKS)
    p.add_argument("--prompt-lens", nargs="+", type=int, default=DEFAULT_PROMPT_LENS)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = []
        for path in args.runs:
            run = load_json(path)
            run["_path"] = str(path)
            runs.append(run)
        comm = load_json(args.comm) if args.comm and Path(args.comm).exists() else None
        records = [load_json(p) for p in args.network if Path(p).exists()]
        result = build(runs, comm, parse_cluster(args.cluster), args.ranks, args.prompt_lens, records,
                       args.emulated_link_gbit)
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
        for row in g["network"]["error"]:
            print(f"costmodel: held out on {row['network']}, {row['phase']}: {row['cells']} cells, "
                  f"mean |error| {fmt(row['mean_abs_error_pct'])}, max {fmt(row['max_abs_error_pct'])}, "
                  f"comm/transfer {[round(x, 2) for x in row['comm_over_transfer']]}", file=sys.stderr)
    return 0
