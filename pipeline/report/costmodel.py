"""The cost model's results (pipeline.study.costmodel's results/costmodel.json): per model group its
calibration, the measured cells beside their predictions with the held-out error, the cluster it
predicts, and predicted tokens/s beyond this machine with the fastest strategy per point."""

from __future__ import annotations

import math

from pipeline.report import network
from pipeline.report.fmt import PHASES, fnum, is_number, table

PREFERRED_ALGO = "online_softmax"  # the algorithm whose predicted curves the report tabulates
CALIBRATION_KEYS = (
    "gflops_per_core",
    "attn_gflops_per_core",
    "decode_gflops_per_core",
    "mem_gb_s_per_node",
    "cores_per_node",
)


def calibration(calib: dict) -> list[dict]:
    return [
        {
            "algo": algo,
            **{k: c.get(k) for k in CALIBRATION_KEYS},
            "borrowed_from": c.get("borrowed_from"),
            "cells": c.get("cells", []),
            "checks": c.get("checks", []),
        }
        for algo, c in sorted(calib.items())
        if isinstance(c, dict)
    ]


def predicted_cells(cells: list[dict]) -> list[dict]:
    """Per measured cell and phase: measured and predicted tokens/s, the error, comm time, bound."""
    out = []
    for c in cells:
        for phase in PHASES:
            got, pred = c.get(f"measured_{phase}_tok_s"), c.get(f"predicted_{phase}_tok_s")
            if not (is_number(got) and is_number(pred) and got):
                continue
            out.append(
                {
                    "cell": c.get("cell"),
                    "phase": phase,
                    "measured_tok_s": got,
                    "predicted_tok_s": pred,
                    "error_pct": c.get(f"{phase}_error_pct", 100 * (pred / got - 1)),
                    "measured_comm_s": c.get(f"measured_{phase}_comm_s"),
                    "predicted_comm_s": c.get(f"predicted_{phase}_comm_s"),
                    "predicted_bound": c.get(f"predicted_{phase}_bound"),
                    "used_for": "calibration" if c.get("calibration_cell") else "held out",
                }
            )
    return out


def curves(rows: list[dict]) -> dict | None:
    """The predicted points of one algorithm (PREFERRED_ALGO when predicted) and, per phase and
    (prompt, P) point, the strategy predicted fastest."""
    if not rows:
        return None
    algos = sorted({r.get("attention_algo") for r in rows if r.get("attention_algo")})
    algo = PREFERRED_ALGO if PREFERRED_ALGO in algos else (algos[0] if algos else None)
    sel = [r for r in rows if r.get("attention_algo") == algo] if algo else rows
    points = [
        {
            "strategy": r["strategy"],
            "prompt_len": r["prompt_len"],
            "nranks": r["nranks"],
            **{f"{p}_tok_s": r.get(f"{p}_tok_s") if r.get("feasible", True) else None for p in PHASES},
        }
        for r in sel
    ]
    fastest = {}
    for phase in PHASES:
        best: dict[tuple[int, int], tuple[str, float]] = {}
        for pt in points:
            v = pt[f"{phase}_tok_s"]
            if is_number(v) and v > best.get((pt["prompt_len"], pt["nranks"]), ("", 0))[1]:
                best[(pt["prompt_len"], pt["nranks"])] = (pt["strategy"], v)
        wins: dict[str, int] = {}
        for strategy, _ in best.values():
            wins[strategy] = wins.get(strategy, 0) + 1
        fastest[phase] = {
            "points": len(best),
            "wins": [{"strategy": s, "points": k} for s, k in sorted(wins.items(), key=lambda x: -x[1])],
        }
    return {
        "algo": algo,
        "other_algos": [a for a in algos if a != algo],
        "points": points,
        "fastest": fastest,
    }


def group(g: dict, fixed: dict | None = None) -> dict:
    m = g.get("model", {})
    return {
        "layers": m.get("config", {}).get("num_hidden_layers"),
        "dtype": m.get("dtype"),
        "calibration": calibration(g.get("calibration") or {}),
        "intra_node": g.get("intra_node"),
        "cells": predicted_cells(g.get("cells", [])),
        "error": g.get("error") or {},
        "cluster": g.get("cluster") or {},
        "curves": curves(g.get("curves", [])),
        "network": network.records(g, fixed),
        "crossed": network.crossed(g.get("cells", [])),
    }


def records(model: dict | None, figure: str | None) -> dict | None:
    if not model:
        return None
    eq = model.get("equations_md") or model.get("equations")
    return {
        "groups": [group(g, model.get("fixed_cost")) for g in model.get("groups", [model])],
        "skipped": [
            {"dtype": s.get("dtype"), "cells": len(s.get("cells", [])), "reason": s.get("reason")}
            for s in model.get("skipped", [])
        ],
        "equations_md": "\n".join(eq) if isinstance(eq, list) else eq,
        "figure": figure,
    }


def calibration_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    head = [
        "algorithm",
        "matmul GFLOP/s",
        "attention GFLOP/s",
        "decode GFLOP/s",
        "memory GB/s",
        "cores",
        "calibration cells",
    ]
    body = [
        [
            r["algo"],
            *[fnum(r[k]) for k in CALIBRATION_KEYS],
            f"borrowed from {r['borrowed_from']}" if r["borrowed_from"] else ", ".join(r["cells"]),
        ]
        for r in rows
    ]
    lines = [
        "Calibrated on this machine (effective rates, per core; memory bandwidth per node):",
        "",
        *table(head, body),
        "",
    ]
    return lines + [f"- Check ({r['algo']}): {check}" for r in rows for check in r["checks"]]


def intra_node_lines(intra: dict | None) -> list[str]:
    if not intra:
        return []
    beta = intra.get("beta_s_per_byte")
    return [
        f"Intra-node MPI ({intra.get('source', '?')}): alpha {fnum(1e6 * intra['alpha_s'], 2)} µs, "
        + (f"beta {1e9 * beta:.3g} ns/byte ({fnum(1 / beta / 1e9)} GB/s)." if beta else "beta 0."),
        "",
    ]


def comm_pair(measured: object, predicted: object) -> str:
    if is_number(measured) and is_number(predicted):
        return f"{fnum(1e3 * measured, 2)} / {fnum(1e3 * predicted, 2)}"
    return "—"


def predicted_lines(g: dict) -> list[str]:
    if not g["cells"]:
        return []
    head = [
        "cell",
        "phase",
        "measured tokens/s",
        "predicted tokens/s",
        "error",
        "comm ms measured / predicted",
        "predicted bound",
        "cell used for",
    ]
    body = [
        [
            str(c["cell"]),
            c["phase"],
            fnum(c["measured_tok_s"]),
            fnum(c["predicted_tok_s"]),
            f"{c['error_pct']:+.0f}%",
            comm_pair(c["measured_comm_s"], c["predicted_comm_s"]),
            str(c["predicted_bound"] or "—"),
            c["used_for"],
        ]
        for c in g["cells"]
    ]
    return ["Predicted beside measured:", "", *table(head, body), "", error_statement(g["error"]), ""]


def error_statement(e: dict) -> str:
    """The prediction error over the held-out cells (those not used to calibrate)."""
    held = e.get("held_out_cells", 0)
    if not held:
        return (
            "Prediction error: every measured cell was used for calibration, so no held-out error "
            "can be stated (measure more than one rank count)."
        )
    parts = [
        f"{phase} mean |error| {e[f'{phase}_mean_abs_error_pct']:.0f}% "
        f"(max {e[f'{phase}_max_abs_error_pct']:.0f}%)"
        for phase in PHASES
        if is_number(e.get(f"{phase}_mean_abs_error_pct"))
    ]
    return (
        f"Prediction error over the {held} held-out cells (of {e.get('cells', '?')}; the others calibrated "
        "the model): " + ", ".join(parts) + "."
    )


def cluster_statement(c: dict) -> str:
    given = c.get("from_config") or []
    return (
        f"Predicted cluster — {c.get('name', '?')}: {c.get('cores_per_node', '?')} cores and "
        f"{fnum(c.get('mem_gb_s_per_node'))} GB/s per node, "
        f"{fnum(c.get('gflops_per_core'))} GFLOP/s per core, "
        f"{c.get('ranks_per_node', '?')} rank(s) per node; network alpha "
        f"{fnum(1e6 * c.get('net_alpha_s', math.nan), 2)} µs, {fnum(c.get('net_bandwidth_gb_s'))} GB/s"
        + (
            f" (from the config: {', '.join(given)}; the rest calibrated here)."
            if given
            else " (all calibrated here or defaults)."
        )
    )


def curve_lines(cv: dict | None) -> list[str]:
    if not cv:
        return []
    pts = cv["points"]
    ps = sorted({p["nranks"] for p in pts})
    at = {(p["strategy"], p["prompt_len"], p["nranks"]): p for p in pts}
    lines = []
    for phase in PHASES:
        body = [
            [s, str(n), *[fnum((at.get((s, n, p)) or {}).get(f"{phase}_tok_s")) for p in ps]]
            for s in dict.fromkeys(p["strategy"] for p in pts)
            for n in sorted({p["prompt_len"] for p in pts})
        ]
        f = cv["fastest"][phase]
        wins = "; ".join(
            f"**{w['strategy']}** in {w['points']} of {f['points']} (prompt, P) points" for w in f["wins"]
        )
        lines += [
            f"Predicted {phase} tokens/s"
            + (f", {cv['algo']}" if cv["algo"] else "")
            + " (— = the engine cannot run it):",
            "",
            *table(["strategy", "prompt", *[f"P={p}" for p in ps]], body),
            "",
            f"- fastest predicted {phase}: {wins}.",
            "",
        ]
    if cv["other_algos"]:
        lines += [
            f"The other algorithms' predictions ({', '.join(cv['other_algos'])}) are in "
            "results/costmodel.json.",
            "",
        ]
    return lines


def lines(rec: dict | None) -> list[str]:
    """The cost model section (its equations go to an appendix)."""
    if not rec:
        return []
    out = [
        "## Cost model",
        "",
        "An alpha-beta + roofline model (`python -m pipeline costmodel`), calibrated on this run's "
        "single-rank cells and on the MPI ping-pong/Allreduce sweep (results/comm.json), predicts every "
        "measured cell and then a cluster this machine cannot be. Its equations are in the appendix.",
        "",
    ]
    for g in rec["groups"]:
        if len(rec["groups"]) > 1:
            out += [f"### {g['layers'] or '?'}-layer model, {g['dtype'] or '?'} weights", ""]
        out += calibration_lines(g["calibration"]) + intra_node_lines(g["intra_node"]) + predicted_lines(g)
        out += network.crossed_lines(g.get("crossed"))
        out += network.lines(g.get("network"))
        out += [cluster_statement(g["cluster"]), ""] if g["cluster"] else []
        out += curve_lines(g["curves"])
    out += [f"- Not modelled ({s['dtype']}, {s['cells']} cells): {s['reason']}" for s in rec["skipped"]]
    if rec["figure"]:
        out += ["", f"![predicted curves]({rec['figure']})", ""]
    return out
