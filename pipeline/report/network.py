"""The cost model meets the network: held-out cells measured on shared memory and across emulated
nodes at each link speed (pipeline.study.netcal), beside the cost model's predictions, with each
phase's compute / transfer / waiting and where the ranks ran. Reads results/costmodel.json only."""

from __future__ import annotations

from pipeline.report.fmt import PHASES, fnum, is_number, table


def _ms(x: object) -> str:
    return fnum(1e3 * x, 1) if is_number(x) else "—"


def _gb_s(beta: object) -> str:
    return fnum(1 / beta / 1e9, 2) if is_number(beta) and beta > 0 else "∞"


def _where(r: dict) -> str:
    """Each rank's host and CPUs: "node0: 0,1; node1: 0,1"."""
    pairs = zip(r["hosts"], r["placement"], strict=False)
    return "; ".join(f"{h}: {','.join(map(str, c or []))}" for h, c in pairs) or "—"


def cell_rows(cells: list[dict]) -> list[dict]:
    """One row per cell and phase."""
    rows = []
    for c in cells:
        for phase in PHASES:
            rows.append({
                "cell": c["cell"], "network": c["network"], "phase": phase,
                "predicted_on": c.get("predicted_on", c["network"]),
                "nodes": c.get("nodes", len(set(c.get("hosts") or []))),
                "crossed_network": c.get("crossed_network", False), "hosts": c.get("hosts", []),
                "placement": c.get("placement", []),
                "measured_tok_s": c.get(f"measured_{phase}_tok_s"),
                "predicted_tok_s": c.get(f"predicted_{phase}_tok_s"),
                "error_pct": c.get(f"{phase}_error_pct"),
                "compute_s": c.get(f"measured_{phase}_compute_s"),
                "transfer_s": c.get(f"measured_{phase}_transfer_s"),
                "wait_s": c.get(f"measured_{phase}_wait_s"),
                "predicted_comm_s": c.get(f"predicted_{phase}_comm_s"),
                "predicted_fixed_s": c.get(f"predicted_{phase}_fixed_s"),
                "predicted_wait_s": c.get(f"predicted_{phase}_wait_s"),
            })
    return rows


def records(g: dict, fixed: dict | None) -> dict | None:
    """The network block of one cost-model group, or None when no netcal record was given."""
    net = g.get("network") or {}
    if not net.get("networks"):
        return None
    return {"networks": net["networks"], "cells": cell_rows(net.get("cells", [])),
            "error": net.get("error", []), "fixed_cost": fixed or {}}


def crossed(cells: list[dict]) -> dict | None:
    """The matrix's cells whose ranks ran on several hosts (the matrix across the emulated
    cluster), per phase, with the link they are predicted on; None when every cell stayed on one."""
    over = [c for c in cells if c.get("crossed_network")]
    if not over:
        return None
    return {"cells": sorted({c["cell"] for c in over}), "links": sorted({c["network"] for c in over}),
            "predicted_on": sorted({c.get("predicted_on", c["network"]) for c in over}),
            "rows": cell_rows(over)}


def crossed_lines(rec: dict | None) -> list[str]:
    """The matrix's cells that crossed the emulated network: which, at what link speed, predicted
    beside measured with that link's network, time split three ways and where the ranks ran."""
    if not rec:
        return []
    head = ["cell", "link", "nodes", "phase", "measured tok/s", "predicted tok/s", "error",
            "compute / transfer / waiting ms", "predicted comm / waiting / fixed ms", "ranks' host: CPUs"]
    body = [[r["cell"], r["network"], str(r["nodes"]), r["phase"], fnum(r["measured_tok_s"]),
             fnum(r["predicted_tok_s"]), f"{r['error_pct']:+.0f}%" if is_number(r["error_pct"]) else "—",
             f"{_ms(r['compute_s'])} / {_ms(r['transfer_s'])} / {_ms(r['wait_s'])}",
             " / ".join(_ms(r[k]) for k in ("predicted_comm_s", "predicted_wait_s", "predicted_fixed_s")),
             _where(r)] for r in rec["rows"]]
    on = ", ".join(rec["predicted_on"])
    return [f"Cells of the matrix that crossed the emulated network ({', '.join(rec['links'])} links, "
            f"ranks on several nodes): {', '.join(rec['cells'])}. Their calls between nodes are "
            f"predicted on: {on}.", "",
            *table(head, body), ""]


def network_line(n: dict) -> str:
    if n.get("skipped"):
        return f"- {n['network']}: not measured ({n['skipped']})."
    classes = "; ".join(
        f"{'≤ ' + fnum(c['up_to_bytes'] / 1024) + ' KiB' if c['up_to_bytes'] else 'larger'}: "
        f"alpha {fnum(1e6 * c['alpha_s'], 2)} µs, {_gb_s(c['beta_s_per_byte'])} GB/s"
        for c in n.get("classes", []))
    where = "this machine" if n["network"] == "shm" else f"{n.get('nodes')} emulated nodes"
    failed = "".join(f" Failed: {f['cell']} ({f['reason']})." for f in n.get("failed", []))
    src = f" (from {', '.join(n['per_call_from'])})" if n.get("per_call_from") else " (tiny model)"
    per_class = "; ".join(
        f"{'≤ ' + fnum(c['up_to_bytes'] / 1024) + ' KiB' if c['up_to_bytes'] else 'larger'} "
        f"{fnum(1e6 * c['per_call_s'], 1)} µs" for c in n.get("per_call_classes", []))
    inside = per_class or f"{fnum(1e6 * n.get('per_call_s', 0), 1)} µs"
    return (f"- {n['network']} ({where}): {classes or 'one class'}; in situ per collective "
            f"inside MPI {inside}, waiting {fnum(1e6 * n.get('wait_per_call_s', 0), 1)} µs per call + "
            f"{fnum(100 * n.get('wait_fraction', 0), 1)}% of compute"
            f"{src}.{failed}")


def error_lines(rows: list[dict]) -> list[str]:
    body = [[r["network"], r["phase"], str(r["cells"]),
             f"{fnum(r['mean_abs_error_pct'], 0)}%" if is_number(r["mean_abs_error_pct"]) else "—",
             f"{fnum(r['max_abs_error_pct'], 0)}%" if is_number(r["max_abs_error_pct"]) else "—",
             ", ".join(f"×{x:.2f}" for x in r["comm_over_transfer"]) or "—"] for r in rows]
    head = ["network", "phase", "held-out cells", "mean abs. error", "max abs. error",
            "predicted comm / measured transfer"]
    return ["Held-out error (goal: mean ≤ 15%, max ≤ 35% per phase; comm within ×0.5–×2 of transfer):", "",
            *table(head, body), ""]


def fixed_cost_line(fx: dict) -> str:
    """The fixed cost per forward and, where recorded, the deepest tiny model's step it came from."""
    step, layer = fnum(1e3 * fx.get("step_s", 0), 2), fnum(1e6 * fx.get("layer_s", 0), 1)
    line = f"Fixed cost per forward ({fx.get('source', '?')}): {step} ms per step + {layer} µs per layer"
    measured, read = fx.get("measured_step_s") or {}, fx.get("weights_read_s") or {}
    if not (measured and read):
        return line + "."
    deep = max(measured, key=int)
    total = fx.get("step_s", 0) + int(deep) * fx.get("layer_s", 0)
    mb = (fx.get("weights_bytes") or {}).get(deep, 0) / 1e6
    return (f"{line} beyond reading its weights: {fnum(1e3 * total, 3)} ms per decode step at {deep} "
            f"layers (goal: ≤ 0.3 ms), from a measured step of {fnum(1e3 * measured[deep], 3)} ms, "
            f"{fnum(1e3 * read[deep], 3)} ms of which is one read of its {fnum(mb, 1)} MB of float32 "
            "weights beside the steps (ext.ops.StreamSet, nothing but loads): bandwidth, charged by "
            "the cost model's memory term.")


def lines(rec: dict | None) -> list[str]:
    """The section: networks, fixed cost, the cells beside their predictions, the error."""
    if not rec:
        return []
    fx = rec["fixed_cost"]
    out = ["### Held-out cells on shared memory and across emulated nodes", "",
           "Measured by `python -m pipeline netcal` (rule `netcal`): the MPI sweep, a tiny model's decode "
           "and a few cells never used in calibration, on this machine and across 2 emulated nodes "
           "(network namespaces of this one machine: their ranks share its cores) per link speed.", "",
           *[network_line(n) for n in rec["networks"]], ""]
    if fx:
        out += [fixed_cost_line(fx), ""]
    if rec["cells"]:
        head = ["cell", "network", "crossed the network", "phase", "measured tok/s", "predicted tok/s",
                "error", "compute / transfer / waiting ms", "predicted comm / waiting / fixed ms",
                "ranks' CPUs"]
        body = [[r["cell"], r["network"], "yes" if r["crossed_network"] else "no", r["phase"],
                 fnum(r["measured_tok_s"]), fnum(r["predicted_tok_s"]),
                 f"{r['error_pct']:+.0f}%" if is_number(r["error_pct"]) else "—",
                 f"{_ms(r['compute_s'])} / {_ms(r['transfer_s'])} / {_ms(r['wait_s'])}",
                 " / ".join(_ms(r[k]) for k in ("predicted_comm_s", "predicted_wait_s", "predicted_fixed_s")),
                 _where(r)] for r in rec["cells"]]
        out += [*table(head, body), "", *error_lines(rec["error"])]
    return out
