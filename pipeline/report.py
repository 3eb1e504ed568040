"""Regenerate results/report.md, results/summary.csv and results/figures/ from the bench JSONs.

    python -m pipeline.report --runs results/runs/*.json --verification results/verification.json \
        --cells headwise_standard_np1_p128 ... --not-applicable "CELL=reason" ... \
        --workflow-config '{"iters": 3, ...}' --out-md results/report.md --out-csv results/summary.csv

Every number in the report comes from the JSONs (and results/costmodel.json when given); nothing
is typed by hand. Cells named by --cells without a JSON are marked missing (their bench failed
or was not run; the log path is given), --not-applicable cells are marked with their reason.
Without --cells the report covers whichever JSONs it is given. Without --verification the
verification table is computed here with pipeline.verify (the same code, the same tolerances).
Figures go to a `figures/` directory beside the markdown file.

Optional sections appear when their keys exist: per-phase "compute_s"/"comm_s"/
"bytes_sent_per_token" (communication split), "memory.peak_rss_mb" (per rank), "roofline"
(any nesting of numbers, e.g. {"gemm_gflops": .., "prefill_fraction": ..}), "comm" (same), and
pipeline.costmodel's results/costmodel.json (--costmodel): {"equations_md": str, "groups": [{
    "calibration": {..}, "error": {..}, "cluster": {..}, "cells": [{"cell", "measured_prefill_tok_s",
    "predicted_prefill_tok_s", "prefill_error_pct", "calibration_cell", (same for decode)}],
    "curves": [{"strategy", "attention_algo", "nranks", "prompt_len", "feasible", "prefill_tok_s",
    "decode_tok_s"}]}]}
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import verify as verify_mod

PHASES = ("prefill", "decode")
CELL_RE = re.compile(r"^(?P<strategy>[a-z]+)_(?P<algo>[a-z_]+)_np(?P<nranks>\d+)_p(?P<prompt_len>\d+)$")
SEED_BEST = ("sequence", "online_softmax", 2)  # the seed's "current best configuration"


@dataclass
class Cell:
    name: str
    strategy: str
    algo: str
    nranks: int
    prompt_len: int
    status: str = "missing"  # "ok", "missing", "n/a"
    reason: str = ""
    run: dict | None = None
    check: dict | None = field(default=None)  # this cell's verification row

    @property
    def label(self) -> str:
        return f"{self.strategy} + {self.algo}"


def parse_cell_name(name: str) -> tuple[str, str, int, int]:
    m = CELL_RE.match(name)
    if not m:
        raise ValueError(f"cell name {name!r} is not {{strategy}}_{{algo}}_np{{P}}_p{{prompt_len}}")
    return m["strategy"], m["algo"], int(m["nranks"]), int(m["prompt_len"])


def collect(
    runs: dict[str, dict], expected: list[str] | None, not_applicable: dict[str, str], logs_dir: str | None
) -> list[Cell]:
    """One Cell per expected name (or per run when nothing is expected), sorted like the matrix."""
    names = list(dict.fromkeys(expected)) if expected else sorted(set(runs) | set(not_applicable))
    cells = []
    for name in names:
        cell = Cell(name, *parse_cell_name(name))
        if name in not_applicable:
            cell.status, cell.reason = "n/a", not_applicable[name]
        elif name in runs:
            cell.status, cell.run = "ok", runs[name]
        else:
            log = f"{logs_dir}/{name}.log" if logs_dir else "its bench log"
            cell.reason = f"no result: the bench failed or was not run (see {log})"
        cells.append(cell)
    order = {"headwise": 0, "sequence": 1}, {"standard": 0, "online_softmax": 1}
    cells.sort(
        key=lambda c: (
            c.prompt_len,
            c.nranks,
            order[0].get(c.strategy, 9),
            c.strategy,
            order[1].get(c.algo, 9),
            c.algo,
        )
    )
    return cells


# ----------------------------------------------------------------------------- formatting


def fnum(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, int):
        return str(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}" if abs(x) >= 1 or x == 0 else f"{x:.3g}"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def tok_s(run: dict, phase: str) -> str:
    p = run[phase]
    return f"{fnum(p['tokens_per_s'])} ({fnum(p['tokens_per_s_min'])}–{fnum(p['tokens_per_s_max'])})"


def oversub(cell: Cell) -> str:
    return " †" if cell.run and cell.run.get("environment", {}).get("oversubscribed") else ""


def flatten(d, prefix: str = "") -> dict[str, float | str]:
    """Nested dict -> {"a.b": leaf} for numbers and short strings (optional, unknown-shape keys)."""
    out: dict[str, float | str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, bool):
        out[prefix[:-1]] = str(d)
    elif isinstance(d, int | float):
        out[prefix[:-1]] = d
    elif isinstance(d, str) and len(d) < 40:
        out[prefix[:-1]] = d
    return out


def fval(v) -> str:
    return fnum(v, 3) if isinstance(v, int | float) else str(v)


# ----------------------------------------------------------------------------- sections


def header(cells: list[Cell], workflow_config: dict | None, generated: str) -> list[str]:
    runs = [c.run for c in cells if c.run]
    lines = [
        "# Qwen3 on CPUs: parallel strategies x attention algorithms",
        "",
        f"Generated {generated} by `python -m pipeline.report` from {len(runs)} bench JSON files "
        "(results/runs/); every number below is computed from them. Do not edit by hand.",
        "",
    ]
    if not runs:
        return lines + ["**No cell produced a result.**", ""]

    def distinct(get) -> str:
        values = sorted({str(get(r)) for r in runs})
        return values[0] if len(values) == 1 else " / ".join(values) + " (differs between cells!)"

    env = lambda r: r.get("environment", {})  # noqa: E731
    model = lambda r: r.get("model", {})  # noqa: E731
    stamps = sorted(env(r).get("timestamp", "") for r in runs if env(r).get("timestamp"))
    m = model(runs[0])
    cfg = m.get("config", {})
    kind = "synthetic (random weights, real architecture)" if m.get("synthetic") else "real checkpoint"
    arch = (
        (
            f"{cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
            f"{cfg.get('num_attention_heads')} query / {cfg.get('num_key_value_heads')} KV heads, "
            f"head_dim {cfg.get('head_dim')}, intermediate {cfg.get('intermediate_size')}, "
            f"vocab {cfg.get('vocab_size')}"
        )
        if cfg
        else "—"
    )
    params = m.get("num_parameters")
    rows = [
        ["measured", f"{stamps[0]} … {stamps[-1]}" if stamps else "—"],
        [
            "machine",
            f"{distinct(lambda r: env(r).get('cpu_model', '?'))}, "
            f"{distinct(lambda r: env(r).get('cores', '?'))} cores "
            f"(host {distinct(lambda r: env(r).get('hostname', '?'))})",
        ],
        [
            "MPI",
            f"{distinct(lambda r: env(r).get('mpi_library', '?'))} "
            f"(MPI {distinct(lambda r: env(r).get('mpi_version', '?'))})",
        ],
        [
            "software",
            f"Python {distinct(lambda r: env(r).get('python', '?'))}, "
            f"NumPy {distinct(lambda r: env(r).get('numpy', '?'))}",
        ],
        ["model", f"Qwen3, {kind}: {arch}"],
        [
            "parameters",
            f"{params / 1e6:.1f} M, stored as {distinct(lambda r: model(r).get('dtype', '?'))}"
            if params
            else distinct(lambda r: model(r).get("dtype", "?")),
        ],
        ["checkpoint digest", f"`{distinct(lambda r: model(r).get('checkpoint_digest', '?'))}`"],
        [
            "ranks x threads",
            ", ".join(
                sorted(
                    {f"{r['cell']['nranks']} x {r['cell'].get('threads_per_rank', '?')}" for r in runs},
                    key=lambda x: int(x.split()[0]),
                )
            ),
        ],
    ]
    lines += table(["", ""], rows) + [""]
    if any(env(r).get("oversubscribed") for r in runs):
        lines += [
            "† marks oversubscribed cells: more ranks x threads than the machine's cores, so "
            "ranks share cores and their times include that contention.",
            "",
        ]
    if workflow_config:
        lines += [
            "Workflow configuration:",
            "",
            "```json",
            json.dumps(workflow_config, indent=1, sort_keys=True),
            "```",
            "",
        ]
    return lines


def cell_status_section(cells: list[Cell]) -> list[str]:
    gaps = [c for c in cells if c.status != "ok"]
    ok = sum(c.status == "ok" for c in cells)
    lines = ["## Cells", "", f"{ok} of {len(cells)} cells measured."]
    if gaps:
        lines += ["", *table(["cell", "status", "why"], [[c.name, c.status, c.reason] for c in gaps])]
    return lines + [""]


def phase_tables(cells: list[Cell], prompt_len: int, phase: str) -> list[str]:
    sub = [c for c in cells if c.prompt_len == prompt_len]
    lines = []
    gen = next((c.run["cell"]["gen_len"] for c in sub if c.run), None)
    iters = next((c.run["cell"]["iters"] for c in sub if c.run), None)
    if phase == "prefill":
        lines += [
            f"### Prefill ({prompt_len} prompt tokens into an empty cache)",
            "",
            "median ms and tokens/s over the timed iterations (slowest rank); the seed's metric "
            f"sums the prefill time of all {iters} iterations (tokens = prompt length x iterations), "
            "as in the seed's tables.",
            "",
        ]
        head = [
            "strategy",
            "algorithm",
            "median ms",
            "ms/token",
            "tokens/s median (min–max)",
            "seed: total ms",
            "seed: ms/token",
            "seed: tokens/s",
        ]
    else:
        lines += [
            f"### Decode ({gen} greedy tokens after the prefill)",
            "",
            "median ms for all decode steps of one iteration; tokens/s = generated tokens / that time.",
            "",
        ]
        head = [
            "strategy",
            "algorithm",
            "median ms",
            "ms/token",
            "tokens/s median (min–max)",
            "step p50 / p90 ms",
        ]
    roofline = any("roofline_fraction" in c.run[phase] for c in sub if c.run)
    if roofline:
        head.append("roofline fraction")
    for p in sorted({c.nranks for c in sub}):
        group = [c for c in sub if c.nranks == p]
        measured = [c for c in group if c.run]
        best = max(measured, key=lambda c: c.run[phase]["tokens_per_s"]) if len(measured) > 1 else None
        rows = []
        for c in group:
            if not c.run:
                rows.append([c.strategy, c.algo, c.status, "—", "—", *(["—"] * (len(head) - 5))])
                continue
            ph = c.run[phase]
            row = [
                c.strategy,
                c.algo + oversub(c),
                fnum(1e3 * ph["median_s"]),
                fnum(ph["ms_per_token"], 2),
                tok_s(c.run, phase),
            ]
            if phase == "prefill":
                s = c.run.get("seed_metric", {})
                row += [fnum(s.get("total_ms")), fnum(s.get("ms_per_token"), 2), fnum(s.get("tokens_per_s"))]
            else:
                st = ph.get("step_ms", {})
                row += [f"{fnum(st.get('p50'), 2)} / {fnum(st.get('p90'), 2)}" if st else "—"]
            if roofline:
                frac = ph.get("roofline_fraction")
                row.append(pct(frac) if isinstance(frac, int | float) else "—")
            if c is best:
                row = [f"**{x}**" for x in row]
            rows.append(row)
        lines += [f"**{p} rank{'s' if p > 1 else ''}**", "", *table(head, rows), ""]
    return lines


def scaling_rows(cells: list[Cell], prompt_len: int, phase: str):
    """(label, {P: (tok/s, speed-up, efficiency)}) per strategy x algorithm."""
    sub = [c for c in cells if c.prompt_len == prompt_len]
    out = []
    for strategy, algo in dict.fromkeys((c.strategy, c.algo) for c in sub):
        group = {c.nranks: c for c in sub if (c.strategy, c.algo) == (strategy, algo)}
        base = group.get(1)
        base_tps = base.run[phase]["tokens_per_s"] if base and base.run else None
        values = {}
        for p, c in sorted(group.items()):
            if c.run:
                tps = c.run[phase]["tokens_per_s"]
                speedup = tps / base_tps if base_tps else None
                values[p] = (tps, speedup, speedup / p if speedup else None, c)
            else:
                values[p] = (None, None, None, c)
        out.append((f"{strategy} + {algo}", values))
    return out


def scaling_section(cells: list[Cell], prompt_len: int) -> list[str]:
    ranks = sorted({c.nranks for c in cells if c.prompt_len == prompt_len})
    lines = [
        f"### Scaling with ranks (prompt {prompt_len})",
        "",
        "tokens/s, then speed-up and parallel efficiency against the same strategy and algorithm on 1 rank.",
        "",
    ]
    for phase in PHASES:
        rows = []
        for label, values in scaling_rows(cells, prompt_len, phase):
            row = [label]
            for p in ranks:
                tps, s, e, c = values.get(p, (None, None, None, None))
                if c is None:
                    row.append("")
                elif tps is None:
                    row.append(c.status)
                else:
                    row.append(fnum(tps) + (f" (×{s:.2f}, {pct(e)})" if s else "") + oversub(c))
            rows.append(row)
        lines += [f"**{phase}**", "", *table(["strategy + algorithm", *[f"P={p}" for p in ranks]], rows), ""]
    return lines


def verification_section(cells: list[Cell], result: dict | None) -> list[str]:
    lines = ["## Verification", ""]
    if result is None:
        return lines + ["No cell to verify.", ""]
    lines += [
        f"Every cell against the single-rank reference of its prompt length (head-wise + standard on "
        f"1 rank when measured): greedy tokens must be identical, logits within {result['atol']:g} "
        f"(absolute; first 8 logits after the prefill and at the last decode step), the logits row's "
        f"L2 norm within {result['rtol']:g} (relative).",
        "",
    ]
    bad = [c["cell"] for c in result["cells"] if not c["ok"]]
    lines.append(
        f"**All {len(result['cells'])} measured cells match.**"
        if not bad
        else f"**{len(bad)} cells do NOT match: {', '.join(bad)}.**"
    )
    return lines + ["", *verify_mod.render_table(result), ""]


def best(cells: list[Cell], phase: str) -> Cell | None:
    measured = [c for c in cells if c.run]
    return max(measured, key=lambda c: c.run[phase]["tokens_per_s"]) if measured else None


def margin(a: Cell, b: Cell, phase: str) -> str:
    """How much faster a is than b, and whether that exceeds their run-to-run spread."""
    pa, pb = a.run[phase], b.run[phase]
    gain = pa["tokens_per_s"] / pb["tokens_per_s"] - 1
    overlap = pa["tokens_per_s_min"] <= pb["tokens_per_s_max"]
    return f"{100 * gain:.1f}% ahead of {b.label}" + (
        " (within the run-to-run spread: their min–max ranges overlap)" if overlap else ""
    )


def findings_section(cells: list[Cell], result: dict | None) -> list[str]:
    lines = [
        "## Findings",
        "",
        "Derived from the measurements above by `pipeline.report`; none is typed by hand.",
        "",
    ]
    lengths = sorted({c.prompt_len for c in cells})
    for n in lengths:
        for phase in PHASES:
            sub = [c for c in cells if c.prompt_len == n]
            for p in sorted({c.nranks for c in sub}):
                group = sorted(
                    (c for c in sub if c.nranks == p and c.run), key=lambda c: -c.run[phase]["tokens_per_s"]
                )
                if not group:
                    continue
                text = (
                    f"- prompt {n}, {phase}, {p} rank{'s' if p > 1 else ''}: fastest is **{group[0].label}** "
                    f"at {fnum(group[0].run[phase]['tokens_per_s'])} tokens/s"
                )
                if len(group) > 1:
                    text += f", {margin(group[0], group[1], phase)}"
                    if len(group) > 2:
                        gain = group[0].run[phase]["tokens_per_s"] / group[-1].run[phase]["tokens_per_s"] - 1
                        text += f" and {100 * gain:.1f}% ahead of the slowest ({group[-1].label})"
                lines.append(text + ".")
            top = best(sub, phase)
            if top:
                lines.append(
                    f"- prompt {n}, {phase}, overall: **{top.label} on {top.nranks} "
                    f"rank{'s' if top.nranks > 1 else ''}** ({fnum(top.run[phase]['tokens_per_s'])} tokens/s)"
                    + scaling_note(cells, top, phase)
                    + "."
                )
    lines += [
        "",
        *sequence_vs_headwise(cells),
        *memory_findings(cells),
        "",
        "### The seed's claims against this data",
        "",
        *seed_claims(cells, result),
        "",
    ]
    missing = [c for c in cells if c.status == "missing"]
    if missing:
        lines += [
            f"Missing cells ({len(missing)}), so findings above leave them out: "
            + ", ".join(c.name for c in missing)
            + ".",
            "",
        ]
    return lines


def scaling_note(cells: list[Cell], top: Cell, phase: str) -> str:
    base = next(
        (
            c
            for c in cells
            if c.run
            and c.nranks == 1
            and c.prompt_len == top.prompt_len
            and (c.strategy, c.algo) == (top.strategy, top.algo)
        ),
        None,
    )
    if not base or top.nranks == 1:
        return ""
    s = top.run[phase]["tokens_per_s"] / base.run[phase]["tokens_per_s"]
    return f", ×{s:.2f} its 1-rank speed"


def pairs(cells: list[Cell], phase: str, key_a, key_b):
    """Matched (a, b) cells with the same remaining coordinates, both measured."""
    index = {(c.strategy, c.algo, c.nranks, c.prompt_len): c for c in cells if c.run}
    out = []
    for k, a in index.items():
        if key_a(a):
            b = index.get(key_b(k))
            if b is not None:
                out.append((a, b, a.run[phase]["tokens_per_s"] / b.run[phase]["tokens_per_s"]))
    return out


def sequence_vs_headwise(cells: list[Cell]) -> list[str]:
    lines = []
    for phase in PHASES:
        matched = [
            (a, b, r)
            for a, b, r in pairs(
                cells,
                phase,
                lambda c: c.strategy == "sequence" and c.nranks > 1,
                lambda k: ("headwise", k[1], k[2], k[3]),
            )
        ]
        if not matched:
            continue
        wins = [f"prompt {a.prompt_len}, P={a.nranks}, {a.algo} (×{r:.2f})" for a, b, r in matched if r > 1]
        lines.append(
            f"- Sequence vs head-wise parallelism, {phase}: sequence is faster in {len(wins)} of "
            f"{len(matched)} matched multi-rank cells" + (": " + "; ".join(wins) if wins else "") + "."
        )
    return lines


def memory_findings(cells: list[Cell]) -> list[str]:
    lines = []
    for a, b, _ in pairs(
        cells,
        "prefill",
        lambda c: c.algo == "online_softmax" and c.nranks == 1,
        lambda k: (k[0], "standard", k[2], k[3]),
    ):
        ma, mb = (max(c.run.get("memory", {}).get("peak_rss_mb") or [math.nan]) for c in (a, b))
        if math.isfinite(ma) and math.isfinite(mb):
            lines.append(
                f"- Peak RSS at prompt {a.prompt_len}, {a.strategy}, 1 rank: online_softmax "
                f"{fnum(ma)} MB, standard {fnum(mb)} MB ({fnum(ma - mb)} MB difference)."
            )
    return lines


def seed_claims(cells: list[Cell], result: dict | None) -> list[str]:
    lines = []
    for n in sorted({c.prompt_len for c in cells}):
        sub = [c for c in cells if c.prompt_len == n and c.run]
        if not sub:
            continue
        for phase in PHASES:
            top = best(sub, phase)
            seed = next((c for c in sub if (c.strategy, c.algo, c.nranks) == SEED_BEST), None)
            claim = (
                f'- *"2 ranks + sequence + online_softmax is the best configuration"* (prompt {n}, {phase}): '
            )
            if seed is None:
                lines.append(claim + "not tested here (that cell was not measured).")
            elif top is seed:
                lines.append(
                    claim + f"**agrees**: it is the fastest cell ({fnum(seed.run[phase]['tokens_per_s'])} "
                    "tokens/s)."
                )
            else:
                lines.append(
                    claim + f"**contradicted**: the fastest is {top.label} on {top.nranks} "
                    f"rank{'s' if top.nranks > 1 else ''} ({fnum(top.run[phase]['tokens_per_s'])} tokens/s); "
                    f"the seed's pick gives {fnum(seed.run[phase]['tokens_per_s'])} tokens/s "
                    f"({100 * (1 - seed.run[phase]['tokens_per_s'] / top.run[phase]['tokens_per_s']):.1f}% "
                    "slower)."
                )
    for phase in PHASES:
        speed = {}
        for n in sorted({c.prompt_len for c in cells}):
            for strategy in ("headwise", "sequence"):
                for label, values in scaling_rows([c for c in cells if c.strategy == strategy], n, phase):
                    for p, (_, s, _, _) in values.items():
                        if p > 1 and s:
                            speed.setdefault((n, label.split(" + ")[1], p), {})[strategy] = s
        both = {k: v for k, v in speed.items() if len(v) == 2}
        claim = f'- *"sequence parallelism scales better than head-wise"* ({phase}): '
        if not both:
            lines.append(claim + "not tested here (needs both strategies on 1 and more ranks).")
            continue
        better = [k for k, v in both.items() if v["sequence"] > v["headwise"]]
        detail = "; ".join(
            f"prompt {n}, {a}, P={p}: sequence ×{v['sequence']:.2f} vs head-wise ×{v['headwise']:.2f}"
            for (n, a, p), v in sorted(both.items())
        )
        verdict = (
            "**agrees**"
            if len(better) == len(both)
            else "**contradicted**"
            if not better
            else f"**partly**: sequence scales better in {len(better)} of {len(both)} cases"
        )
        lines.append(claim + f"{verdict} ({detail}).")
    for phase in PHASES:
        matched = pairs(
            cells, phase, lambda c: c.algo == "online_softmax", lambda k: (k[0], "standard", k[2], k[3])
        )
        claim = f'- *"online_softmax is faster than standard"* ({phase}): '
        if not matched:
            lines.append(claim + "not tested here.")
            continue
        ratio = statistics.median(r for _, _, r in matched)
        faster = sum(r > 1 for _, _, r in matched)
        verdict = (
            "no measurable difference"
            if abs(ratio - 1) < 0.02
            else "**agrees**"
            if ratio > 1
            else "**contradicted**"
        )
        lines.append(
            claim + f"{verdict}: online_softmax is faster in {faster} of {len(matched)} matched cells, "
            f"median speed ratio online/standard ×{ratio:.3f}."
        )
    if result is not None and result["cells"]:
        algos = {c["cell"] for c in result["cells"]}
        diffs = [c["max_abs_diff"] for c in result["cells"] if isinstance(c["max_abs_diff"], int | float)]
        worst = max(diffs, default=math.nan)
        claim = (
            '- *"standard and online_softmax give different output ranges (a numerical difference of '
            'the algorithms)"*: '
        )
        if any("online_softmax" in a for a in algos) and any("_standard_" in a for a in algos):
            if all(c["ok"] for c in result["cells"]):
                lines.append(
                    claim + f"**contradicted**: every cell, of both algorithms and every strategy and rank "
                    f"count, produces the same greedy tokens as the single-rank reference, with logits "
                    f"within {verify_mod.fmt_diff(worst)} of it (see Verification)."
                )
            else:
                lines.append(claim + "cells differ here; see Verification for which and by how much.")
    return lines


def comm_section(cells: list[Cell]) -> list[str]:
    measured = [c for c in cells if c.run and any("comm_s" in c.run[p] for p in PHASES)]
    if not measured:
        return []
    rows = []
    for c in measured:
        row = [c.name]
        for p in PHASES:
            ph = c.run[p]
            comm_s, comp_s = ph.get("comm_s"), ph.get("compute_s")
            share = comm_s / ph["median_s"] if comm_s is not None and ph["median_s"] else None
            row += [
                fnum(1e3 * comp_s if comp_s is not None else None),
                fnum(1e3 * comm_s if comm_s is not None else None),
                pct(share) if share is not None else "—",
                fnum(ph.get("bytes_sent_per_token")),
            ]
        rows.append(row)
    head = ["cell"] + [
        f"{p} {k}" for p in PHASES for k in ("compute ms", "comm ms", "comm share", "bytes sent/token/rank")
    ]
    lines = [
        "## Compute and communication",
        "",
        "Median time split into compute and communication (MPI calls) for the slowest rank, and the "
        "bytes each rank sends per token.",
        "",
        *table(head, rows),
        "",
    ]
    extra = [(c, flatten(c.run["comm"])) for c in cells if c.run and c.run.get("comm")]
    if extra:
        keys = sorted({k for _, f in extra for k in f})
        lines += [
            "Communication measurements:",
            "",
            *table(["cell", *keys], [[c.name, *[fval(f.get(k, "—")) for k in keys]] for c, f in extra]),
            "",
        ]
    return lines


def roofline_section(cells: list[Cell]) -> list[str]:
    extra = [
        (
            c,
            {
                **flatten(c.run.get("roofline") or {}),
                **{
                    f"{p}.roofline_fraction": c.run[p]["roofline_fraction"]
                    for p in PHASES
                    if "roofline_fraction" in c.run[p]
                },
            },
        )
        for c in cells
        if c.run
    ]
    extra = [(c, f) for c, f in extra if f]
    if not extra:
        return []
    keys = sorted({k for _, f in extra for k in f})
    return [
        "## Roofline",
        "",
        "Ceilings measured in the same run (GEMM at the model's prefill shapes, streaming GEMV "
        "bandwidth) and the fraction of them each phase achieves.",
        "",
        *table(["cell", *keys], [[c.name, *[fval(f.get(k, "—")) for k in keys]] for c, f in extra]),
        "",
    ]


def memory_section(cells: list[Cell]) -> list[str]:
    measured = [c for c in cells if c.run and c.run.get("memory", {}).get("peak_rss_mb")]
    if not measured:
        return []
    rows = [
        [
            c.name,
            fnum(max(c.run["memory"]["peak_rss_mb"])),
            ", ".join(fnum(x) for x in c.run["memory"]["peak_rss_mb"]),
        ]
        for c in measured
    ]
    return [
        "## Memory",
        "",
        "Peak resident set size per rank (weights are memory-mapped and shared through the page "
        "cache, so they count in every rank's RSS).",
        "",
        *table(["cell", "max MB", "per rank MB"], rows),
        "",
    ]


def costmodel_section(cells: list[Cell], model: dict | None) -> list[str]:
    """pipeline.costmodel's results/costmodel.json: per model group its calibration, the measured
    cells beside their predictions, and predicted curves beyond this machine; equations last."""
    if not model:
        return []
    lines = ["## Cost model", ""]
    for group in model.get("groups", [model]):
        lines += costmodel_group(group)
    eq = model.get("equations_md") or model.get("equations")
    if eq:
        lines += ["### Appendix: the cost model's equations", "", *(eq if isinstance(eq, list) else [eq]), ""]
    return lines


def costmodel_group(group: dict) -> list[str]:
    lines = []
    calib = flatten(group.get("calibration") or {})
    if calib:
        rows = [[k, fval(v)] for k, v in calib.items()]
        lines += ["Calibrated on this machine:", "", *table(["quantity", "value"], rows), ""]
    rows = []
    for c in group.get("cells", []):
        for phase in PHASES:
            got, pred = c.get(f"measured_{phase}_tok_s"), c.get(f"predicted_{phase}_tok_s")
            if isinstance(got, int | float) and isinstance(pred, int | float) and got:
                err = c.get(f"{phase}_error_pct", 100 * (pred / got - 1))
                used = "calibration" if c.get("calibration_cell") else "held out"
                rows.append([str(c.get("cell")), phase, fnum(got), fnum(pred), f"{err:+.0f}%", used])
    if rows:
        summary = ", ".join(
            f"{k.replace('_', ' ')} {fval(v)}" for k, v in flatten(group.get("error") or {}).items()
        )
        lines += [
            "Predicted beside measured" + (f" ({summary})" if summary else "") + ":",
            "",
            *table(
                ["cell", "phase", "measured tokens/s", "predicted tokens/s", "error", "cell used for"], rows
            ),
            "",
        ]
    cluster = flatten(group.get("cluster") or {})
    if cluster:
        lines += [
            "Predicted cluster:",
            "",
            *table(["quantity", "value"], [[k, fval(v)] for k, v in cluster.items()]),
            "",
        ]
    curves: dict = {}
    for row in group.get("curves", []):
        label = row.get("strategy", "?") + (
            f" + {row['attention_algo']}" if row.get("attention_algo") else ""
        )
        for phase in PHASES:
            value = row.get(f"{phase}_tok_s") if row.get("feasible", True) else None
            curves.setdefault((phase, label), {}).setdefault(row.get("prompt_len"), {})[row.get("nranks")] = (
                value
            )
    for (phase, label), by_len in sorted(curves.items()):
        ranks = sorted({r for v in by_len.values() for r in v})
        body = [[str(n), *[fnum(v.get(r)) for r in ranks]] for n, v in sorted(by_len.items())]
        lines += [
            f"Predicted {phase} tokens/s, {label} (— = not applicable):",
            "",
            *table(["prompt", *[f"P={r}" for r in ranks]], body),
            "",
        ]
    return lines


# ----------------------------------------------------------------------------- CSV


def summary_rows(cells: list[Cell]) -> list[dict]:
    speed = {}
    for n in sorted({c.prompt_len for c in cells}):
        for phase in PHASES:
            for _, values in scaling_rows(cells, n, phase):
                for _, (_, s, e, c) in values.items():
                    speed[(c.name, phase)] = (s, e)
    rows = []
    for c in cells:
        row = {
            "cell": c.name,
            "status": c.status,
            "reason": c.reason,
            "strategy": c.strategy,
            "algorithm": c.algo,
            "nranks": c.nranks,
            "prompt_len": c.prompt_len,
        }
        r = c.run
        if r:
            cell, env = r["cell"], r.get("environment", {})
            row.update(
                gen_len=cell.get("gen_len"),
                iters=cell.get("iters"),
                warmup=cell.get("warmup"),
                threads_per_rank=cell.get("threads_per_rank"),
                oversubscribed=env.get("oversubscribed"),
            )
            for phase in PHASES:
                ph = r[phase]
                row.update(
                    {
                        f"{phase}_median_ms": 1e3 * ph["median_s"],
                        f"{phase}_min_ms": 1e3 * ph["min_s"],
                        f"{phase}_max_ms": 1e3 * ph["max_s"],
                        f"{phase}_ms_per_token": ph["ms_per_token"],
                        f"{phase}_tokens_per_s": ph["tokens_per_s"],
                        f"{phase}_tokens_per_s_min": ph["tokens_per_s_min"],
                        f"{phase}_tokens_per_s_max": ph["tokens_per_s_max"],
                    }
                )
                for key in ("compute_s", "comm_s"):
                    if key in ph:
                        row[f"{phase}_{key[:-2]}_ms"] = 1e3 * ph[key]
                if "bytes_sent_per_token" in ph:
                    row[f"{phase}_bytes_sent_per_token"] = ph["bytes_sent_per_token"]
                s, e = speed.get((c.name, phase), (None, None))
                row.update({f"{phase}_speedup": s, f"{phase}_efficiency": e})
            for k, v in (r["decode"].get("step_ms") or {}).items():
                row[f"decode_step_{k}_ms"] = v
            row["ttft_ms"] = r.get("ttft_ms")
            for k, v in r.get("seed_metric", {}).items():
                row[f"seed_{k}"] = v
            rss = r.get("memory", {}).get("peak_rss_mb")
            if rss:
                row.update(peak_rss_mb_max=max(rss), peak_rss_mb_per_rank=";".join(f"{x:.1f}" for x in rss))
            for section in ("roofline", "comm"):
                for k, v in flatten(r.get(section) or {}).items():
                    row[f"{section}.{k}"] = v
        if c.check:
            row.update(
                verify_reference=c.check["reference"],
                verify_tokens_equal=c.check["tokens_equal"],
                verify_max_abs_diff=c.check["max_abs_diff"],
                verify_l2_rel_diff=c.check["l2_rel_diff"],
                verify_ok=c.check["ok"],
            )
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
            )


# ----------------------------------------------------------------------------- main


def build(
    cells: list[Cell],
    result: dict | None,
    workflow_config: dict | None,
    costmodel: dict | None,
    figures: dict[int, list[str]],
    generated: str,
    partial: bool = False,
) -> str:
    checks = {c["cell"]: c for c in result["cells"]} if result else {}
    for c in cells:
        c.check = checks.get(c.name)
    lines = header(cells, workflow_config, generated)
    if partial:
        lines += [
            "> **Partial report.** The workflow run failed (see the Cells table); this report was built "
            "from the cells that exist, with the verification computed here. The next "
            "`snakemake report` reruns what is missing and rebuilds it.",
            "",
        ]
    lines += cell_status_section(cells)
    for n in sorted({c.prompt_len for c in cells}):
        lines += [f"## Prompt length {n}", ""]
        for phase in PHASES:
            lines += phase_tables(cells, n, phase)
        lines += scaling_section(cells, n)
        lines += [
            "Figures: " + ", ".join(f"[{Path(f).stem}]({f})" for f in figures.get(n, [])),
            "",
            *[f"![{Path(f).stem}]({f})" for f in figures.get(n, [])],
            "",
        ]
    lines += verification_section(cells, result) + findings_section(cells, result)
    lines += (
        comm_section(cells)
        + roofline_section(cells)
        + memory_section(cells)
        + costmodel_section(cells, costmodel)
    )
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", nargs="*", default=[], help="bench JSON files")
    p.add_argument("--runs-dir", help="also every *.json in this directory")
    p.add_argument("--cells", nargs="*", help="every cell of the matrix (missing ones are marked)")
    p.add_argument(
        "--not-applicable",
        nargs="*",
        default=[],
        metavar="CELL=REASON",
        help="cells that cannot run, with the reason",
    )
    p.add_argument("--verification", help="results/verification.json (default: computed here)")
    p.add_argument("--atol", type=float, default=1e-3, help="verify tolerance when computed here")
    p.add_argument("--rtol", type=float, default=1e-4, help="verify tolerance when computed here")
    p.add_argument("--workflow-config", help="the workflow's config as a JSON string")
    p.add_argument("--costmodel", help="cost model predictions (JSON), shown when given")
    p.add_argument("--logs-dir", default="results/logs/bench", help="where the bench logs are")
    p.add_argument("--out-md", required=True, help="the report (figures go to figures/ beside it)")
    p.add_argument("--out-csv", required=True, help="one row per cell")
    p.add_argument("--partial", action="store_true", help="built after a failed workflow run: say so")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = list(args.runs)
    if args.runs_dir:
        paths += sorted(str(p) for p in Path(args.runs_dir).glob("*.json"))
    try:
        runs = verify_mod.load_runs(paths)
        not_applicable = dict(item.split("=", 1) for item in args.not_applicable)
        if args.cells:
            runs = {k: v for k, v in runs.items() if k in set(args.cells)}
        cells = collect(runs, args.cells, not_applicable, args.logs_dir)
        if args.verification:
            result = json.loads(Path(args.verification).read_text())
        else:
            result = verify_mod.verify(runs, args.atol, args.rtol, strict=False) if runs else None
    except (verify_mod.RunError, ValueError, OSError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    out_md = Path(args.out_md)
    fig_dir = out_md.parent / "figures"
    figures: dict[int, list[str]] = {}
    from pipeline import figures as fig

    for n in sorted({c.prompt_len for c in cells}):
        sub = [c for c in cells if c.prompt_len == n]
        fig.throughput_vs_ranks(sub, n, fig_dir / f"throughput_p{n}.png")
        fig.cells_bars(sub, n, fig_dir / f"cells_p{n}.png")
        figures[n] = [f"figures/throughput_p{n}.png", f"figures/cells_p{n}.png"]
    generated = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    workflow_config = json.loads(args.workflow_config) if args.workflow_config else None
    costmodel = (
        json.loads(Path(args.costmodel).read_text())
        if args.costmodel and Path(args.costmodel).exists()
        else None
    )
    text = build(cells, result, workflow_config, costmodel, figures, generated, args.partial)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    write_csv(summary_rows(cells), Path(args.out_csv))

    missing = [c.name for c in cells if c.status == "missing"]
    print(
        f"report: {len(runs)} cells -> {out_md}, {args.out_csv}, {fig_dir}/"
        + (f"; missing: {', '.join(missing)}" if missing else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
