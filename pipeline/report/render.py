"""Regenerate results/report.md, results/summary.csv and results/figures/ from the bench JSONs.

    python -m pipeline report --runs results/runs/*.json --verification results/verification.json \
        --cells headwise_standard_np1_p128 ... --not-applicable "CELL=reason" ... \
        --workflow-config '{"iters": 3, ...}' --out-md results/report.md --out-csv results/summary.csv

Every number in the report comes from the JSONs (and results/costmodel.json when given); nothing
is typed by hand. Cells named by --cells without a JSON are marked missing (their bench failed
or was not run; the log path is given), --not-applicable cells are marked with their reason.
Without --cells the report covers whichever JSONs it is given. Without --verification the
verification table is computed here with pipeline.report.verify (the same code, the same tolerances).
Figures go to a `figures/` directory beside the markdown file.

Optional sections appear when their keys exist: per-phase "compute_s"/"comm_s"/
"bytes_sent_per_token" (communication split), "memory.peak_rss_mb" (per rank), "roofline"
(any nesting of numbers, e.g. {"gemm_gflops": .., "prefill_fraction": ..}), "comm" (same), and
pipeline.study.costmodel's results/costmodel.json (--costmodel): {"equations_md": str, "groups": [{
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

from pipeline.report import verify as verify_mod

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
        f"Generated {generated} by `python -m pipeline report` from {len(runs)} bench JSON files "
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
            f"{distinct(lambda r: env(r).get('cores', '?'))} cores, "
            f"{distinct(lambda r: env(r).get('simd_lanes', '?'))}-lane float vectors "
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
            "sequence layout",
            distinct(lambda r: r["cell"].get("sequence_layout", "contiguous"))
            if any(r["cell"]["parallel_strategy"] == "sequence" for r in runs)
            else "—",
        ],
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


def phase_tables(cells: list[Cell], prompt_len: int, phase: str, baseline: dict | None = None) -> list[str]:
    """One table per rank count; the HF baseline (if measured at this length) joins the 1-rank one."""
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
        head.append("% of GEMM ceiling" if phase == "prefill" else "% of streaming bandwidth")
    for p in sorted({c.nranks for c in sub} | ({1} if baseline else set())):
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
        if baseline and p == 1:
            rows.append(baseline_row(baseline, phase, len(head)))
        lines += [f"**{p} rank{'s' if p > 1 else ''}**", "", *table(head, rows), ""]
        if baseline and p == 1 and phase == "prefill":
            lines += [baseline_note(baseline, sub), ""]
    return lines


def baseline_row(b: dict, phase: str, width: int) -> list[str]:
    """The HF transformers row of a 1-rank table (same columns as our cells)."""
    ph = b[phase]
    env = b.get("environment", {})
    row = [
        f"*{b.get('name', 'HF transformers (torch)')}*",
        f"{env.get('attn_implementation') or '?'}, {b['cell'].get('threads', '?')} threads",
        fnum(1e3 * ph["median_s"]),
        fnum(ph["ms_per_token"], 2),
        tok_s(b, phase),
    ]
    if phase == "prefill":
        s = b.get("seed_metric", {})
        row += [fnum(s.get("total_ms")), fnum(s.get("ms_per_token"), 2), fnum(s.get("tokens_per_s"))]
    else:
        st = ph.get("step_ms", {})
        row += [f"{fnum(st.get('p50'), 2)} / {fnum(st.get('p90'), 2)}" if st else "—"]
    return row + ["—"] * (width - len(row))


def baseline_note(b: dict, sub: list[Cell]) -> str:
    """What the HF row is, and whether it computed what our reference cell computed."""
    env = b.get("environment", {})
    text = (
        f"*{b.get('name', 'HF transformers')}*: `Qwen3ForCausalLM` from the same checkpoint in float32 "
        f"(torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}), the same prompt ids, "
        f"prefill with logits of the last position only, then greedy decode on its KV cache "
        f"(`python -m pipeline baseline`)."
    )
    ref = next(
        (
            c
            for c in sorted(sub, key=lambda c: (c.strategy != "headwise", c.algo != "standard"))
            if c.run and c.nranks == 1
        ),
        None,
    )
    if ref is None:
        return text
    ours, theirs = ref.run["output"], b.get("output", {})
    if theirs.get("prompt_ids") != ours["prompt_ids"]:
        return text + f" **Its prompt differs from {ref.name}'s: not comparable.**"
    same = theirs.get("greedy_tokens") == ours["greedy_tokens"]
    diff = max(
        verify_mod.max_abs_diff(theirs[k]["first8"], ours[k]["first8"])
        for k in ("prefill_logits", "final_logits")
    )
    return text + (
        f" Against {ref.name}: greedy tokens {'identical' if same else '**differ**'}, "
        f"logits (first 8, after prefill and last step) within {verify_mod.fmt_diff(diff)}."
    )


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
        "Derived from the measurements above by `pipeline.report.render`; none is typed by hand.",
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
    """Per cell: achieved prefill GFLOP/s and decode GB/s against the ceilings measured in its run."""
    measured = [c for c in cells if c.run and c.run.get("roofline")]
    if not measured:
        return []
    typical = {
        key: statistics.median(v)
        for key in ("gemm_gflops", "gemv_gb_s")
        if (
            v := [
                c.run["roofline"][key]
                for c in measured
                if isinstance(c.run["roofline"].get(key), int | float)
            ]
        )
    }
    rows, disturbed = [], []
    for c in measured:
        r = c.run["roofline"]
        ceil = r.get("ceilings") or {}
        if any(isinstance(r.get(k), int | float) and r[k] < 0.5 * t for k, t in typical.items()):
            disturbed.append(c.name)

        def with_best(value, best):
            return fnum(value) + (f" (best {fnum(best)})" if isinstance(best, int | float) else "")

        rows.append(
            [
                c.name + oversub(c),
                fnum(r.get("prefill_gflops")),
                with_best(r.get("gemm_gflops"), ceil.get("gemm_gflops_best")),
                pct(r["prefill_fraction"]) if "prefill_fraction" in r else "—",
                fnum(r.get("decode_gb_s")),
                with_best(r.get("gemv_gb_s"), ceil.get("gemv_gb_s_best")),
                pct(r["decode_fraction"]) if "decode_fraction" in r else "—",
            ]
        )
    head = [
        "cell",
        "prefill GFLOP/s",
        "GEMM ceiling GFLOP/s",
        "prefill % of ceiling",
        "decode GB/s",
        "streaming ceiling GB/s",
        "decode % of ceiling",
    ]
    return [
        "## Roofline",
        "",
        "Ceilings measured in the same run with the job's cores: NumPy's float32 GEMM at the model's "
        "prefill shapes (median; best repeat in brackets) and the bandwidth of GEMVs streaming distinct "
        "weights from DRAM. Prefill GFLOP/s = the model's FLOPs of the prompt / prefill time; decode "
        "GB/s = the weights and KV cache read by the decode steps / decode time (study/roofline.py). "
        "The ceilings are NumPy's (OpenBLAS) rates, not the hardware's peaks: above 100% our kernels "
        "stream or compute faster than NumPy's on the same shapes.",
        "",
        *table(head, rows),
        "",
        *(
            [
                "Ceilings below half the median of all cells (the machine was busy while they were "
                "measured, so these cells' fractions are not trustworthy): " + ", ".join(disturbed) + ".",
                "",
            ]
            if disturbed
            else []
        ),
    ]


def pct_floor(x: float) -> str:
    """A fraction as a percent truncated to one decimal: 0.8996 is "89.9%", never "90.0%"."""
    # (+1e-9: 1.001 * 1000 is 1000.9999... in binary and must still read 100.1%.)
    return f"{math.floor(1000 * x + 1e-9) / 10:.1f}%"


def verdict(x: float, target: float) -> str:
    """`x` against `target`, both fractions: "89.9% (target 90%: **not met**)"."""
    return f"{pct_floor(x)} (target {pct(target)}: {'**met**' if x >= target else '**not met**'})"


RANKS_TARGET = 0.9  # head-wise, C ranks x 1 thread over 1 rank x C threads


def targets_section(
    cells: list[Cell], rank_compare: dict | None = None, roofline_compare: dict | None = None
) -> list[str]:
    """The engine's performance targets, checked against the measurements:
    1 rank x 2 threads at prompt 128 reaches 75% of the GEMM ceiling in prefill and 85% of the
    streaming bandwidth in decode; head-wise on 2 ranks x 1 thread reaches 90% of 1 rank x 2 threads.
    Each is judged on its back-to-back measurement where it was run (pipeline.study.roofline_compare,
    pipeline.study.rank_compare), else on the matrix's cells."""
    lines, judged_algos = roofline_compare_lines(roofline_compare)
    for c in cells:
        if not (
            c.run and c.nranks == 1 and c.prompt_len == 128 and c.run["cell"].get("threads_per_rank") == 2
        ):
            continue
        pf, df = (c.run[p].get("roofline_fraction") for p in PHASES)
        if not (isinstance(pf, int | float) and isinstance(df, int | float)):
            continue
        if c.algo in judged_algos:
            lines.append(
                f"- 1 rank x 2 threads, prompt 128, {c.label}: prefill at {pct_floor(pf)} of the GEMM "
                f"ceiling, decode at {pct_floor(df)} of the streaming bandwidth in the matrix's cell, "
                "its ceilings measured once after its runs (judged back to back, above)."
            )
            continue
        lines.append(
            f"- 1 rank x 2 threads, prompt 128, {c.label}: prefill at {verdict(pf, 0.75)} of the GEMM "
            f"ceiling, decode at {verdict(df, 0.85)} of the streaming bandwidth."
        )
    judged = set()
    for line, key in rank_compare_lines(rank_compare):
        lines.append(line)
        judged.add(key)
    index = {(c.strategy, c.algo, c.nranks, c.prompt_len): c for c in cells if c.run}
    for (strategy, algo, p, n), two in sorted(index.items()):
        one = index.get((strategy, algo, 1, n))
        if strategy != "headwise" or p != 2 or one is None:
            continue
        t1, t2 = one.run["cell"].get("threads_per_rank"), two.run["cell"].get("threads_per_rank")
        if not (isinstance(t1, int) and t2 and t1 == 2 * t2):
            continue
        ratios = [two.run[ph]["tokens_per_s"] / one.run[ph]["tokens_per_s"] for ph in PHASES]
        head = (
            f"- head-wise + {algo}, prompt {n}: 2 ranks x {t2} thread{'s' if t2 > 1 else ''} reach "
        )
        if (algo, n, t1, t2) in judged:
            lines.append(
                f"{head}{pct_floor(ratios[0])} of 1 rank x {t1} threads in prefill and "
                f"{pct_floor(ratios[1])} in decode in the matrix's cells, which ran minutes apart "
                "(judged back to back, above)."
            )
            continue
        lines.append(
            f"{head}{verdict(ratios[0], RANKS_TARGET)} of 1 rank x {t1} threads in prefill and "
            f"{verdict(ratios[1], RANKS_TARGET)} in decode."
        )
    if not lines:
        return []
    return ["### Performance targets", "", *lines, ""]


def roofline_compare_lines(d: dict | None) -> tuple[list[str], set[str]]:
    """Verdict lines of pipeline.study.roofline_compare (1 rank x 2 threads) and the algorithms judged."""
    if not d or d.get("threads") != 2 or d.get("prompt_len") != 128:
        return [], set()
    lines = []
    for g in d.get("groups", []):
        rounds = ", ".join(
            f"{ph} " + " / ".join(pct_floor(r[f"{ph}_fraction"]) for r in g["rounds"]) for ph in PHASES
        )
        lines.append(
            f"- 1 rank x 2 threads, prompt 128, {g['algo']}, back to back: prefill at "
            f"{verdict(g['prefill_fraction'], 0.75)} of the GEMM ceiling, decode at "
            f"{verdict(g['decode_fraction'], 0.85)} of the streaming bandwidth (median of "
            f"{d['rounds']} rounds, each measuring the ceilings and one prefill + decode adjacent in "
            f"time; per round: {rounds}; pipeline/study/roofline_compare.py)."
        )
    return lines, {g["algo"] for g in d.get("groups", [])}


def rank_compare_lines(d: dict | None) -> list[tuple[str, tuple]]:
    """One verdict line per algorithm of pipeline.study.rank_compare, with the (algo, prompt, threads of
    the 1-rank layout, threads per rank of the other) it judges."""
    if not d:
        return []
    out = []
    for g in d.get("groups", []):
        one, many = g["threads"], g["ranks"]
        rounds = ", ".join(
            f"{ph} " + " / ".join(pct_floor(r) for r in g[f"{ph}_ratio_rounds"]) for ph in PHASES
        )
        line = (
            f"- head-wise + {g['algo']}, prompt {d['prompt_len']}, back to back: {many['nranks']} ranks x "
            f"{many['threads_per_rank']} thread reach {verdict(g['prefill_ratio'], RANKS_TARGET)} of "
            f"1 rank x {one['threads_per_rank']} threads in prefill and "
            f"{verdict(g['decode_ratio'], RANKS_TARGET)} in decode (median of {d['rounds']} rounds, the "
            f"two layouts adjacent in each; per round: {rounds}; pipeline/study/rank_compare.py)"
            + ("." if g["same_greedy_tokens"] else "; **the two layouts' greedy tokens differ**.")
        )
        key = (g["algo"], d["prompt_len"], one["threads_per_rank"], many["threads_per_rank"])
        out.append((line, key))
    return out


def memory_section(cells: list[Cell]) -> list[str]:
    measured = [c for c in cells if c.run and c.run.get("memory", {}).get("peak_rss_mb")]
    if not measured:
        return []
    anon = any(c.run["memory"].get("anon_mb") for c in measured)
    scratch = any(c.run["memory"].get("attention_scratch_mb") for c in measured)
    rows = []
    for c in measured:
        mem = c.run["memory"]
        row = [c.name, fnum(max(mem["peak_rss_mb"])), ", ".join(fnum(x) for x in mem["peak_rss_mb"])]
        if anon:
            row.append(", ".join(fnum(x) for x in mem.get("anon_mb") or []) or "—")
        if scratch:
            row.append(fnum(max(mem.get("attention_scratch_mb") or [math.nan]), 2))
        rows.append(row)
    head = ["cell", "peak RSS max MB", "peak RSS per rank MB"] + (
        ["private (anon) per rank MB"] if anon else []
    ) + (["attention working memory MB (largest rank)"] if scratch else [])
    return [
        "## Memory",
        "",
        "Peak resident set size per rank (weights are memory-mapped and shared through the page "
        "cache, so they count in every rank's RSS)"
        + (
            "; the private anonymous memory (KV cache, activations, buffers) is what each rank adds."
            if anon
            else "."
        )
        + (
            " Attention working memory: the most one attention call held (standard: the whole "
            "heads x queries x keys score tensor; online_softmax: one block of scores per thread)."
            if scratch
            else ""
        ),
        "",
        *table(head, rows),
        "",
    ]


BF16_DECODE_TARGET = 1.6  # bf16 decode over float32 decode, 1 rank (llama.cpp's is 1.5)


def dtype_section(d: dict | None) -> list[str]:
    """float32 vs bf16 exports benchmarked back to back (pipeline.study.dtype_compare)."""
    if not d or not d.get("groups"):
        return []
    rows, verdicts = [], []
    for g in d["groups"]:
        f32, bf = g["dtypes"].get("float32"), g["dtypes"].get("bfloat16")
        if not (f32 and bf):
            continue
        tpr = f32["threads_per_rank"]
        rows.append(
            [
                f"{g['nranks']} x {tpr}",
                fnum(f32["decode_tokens_per_s"], 2),
                fnum(bf["decode_tokens_per_s"], 2),
                f"×{g['decode_speedup']:.2f}",
                fnum(f32["decode_gb_s"]),
                fnum(bf["decode_gb_s"]),
                fnum(f32["prefill_tokens_per_s"]),
                fnum(bf["prefill_tokens_per_s"]),
                fnum(f32["peak_rss_mb"], 0),
                fnum(bf["peak_rss_mb"], 0),
                "yes" if g.get("same_greedy_tokens") else "**no**",
            ]
        )
        if g["nranks"] == 1:
            ok = g["decode_speedup"] >= BF16_DECODE_TARGET
            rounds = g.get("decode_speedup_rounds")
            verdicts.append(
                f"- 1 rank x {tpr} threads: bf16 decode ×{g['decode_speedup']:.2f} float32's "
                f"(target ×{BF16_DECODE_TARGET}: {'**met**' if ok else '**not met**'})"
                + (f"; per round: {' / '.join(f'×{r:.2f}' for r in rounds)}." if rounds else ".")
            )
    if not rows:
        return []
    head = [
        "ranks x threads", "float32 decode tok/s", "bf16 decode tok/s", "bf16 speed-up",
        "float32 GB/s", "bf16 GB/s", "float32 prefill tok/s", "bf16 prefill tok/s",
        "float32 peak RSS MB", "bf16 peak RSS MB", "same greedy tokens",
    ]
    return [
        "## bf16 weights",
        "",
        f"The same model exported with float32 and with bf16 weights, benchmarked back to back "
        f"({d['strategy']} + {d['algo']}, prompt {d['prompt_len']}, {d['gen_len']} decode steps; "
        f"medians of {d['rounds']} alternating rounds, study/dtype_compare.py; a speed-up is the median "
        "over the rounds of the ratio within each round, between two runs adjacent in time). Decode streams "
        "every weight once per token: bf16 reads half the bytes, widened to float32 in the kernels.",
        "",
        *table(head, rows),
        "",
        *verdicts,
        "",
    ]


LONG_CONTEXT = 1024  # prompt lengths from here on get the long-context section


def long_context_section(cells: list[Cell]) -> list[str]:
    """Prefill tokens/s and peak RSS per cell across prompt lengths, when long prompts were measured,
    and where sequence parallelism beats head-wise (computed, with the ratio)."""
    lengths = sorted({c.prompt_len for c in cells if c.run})
    if not lengths or lengths[-1] < LONG_CONTEXT:
        return []
    rows = []
    for strategy, algo, p in sorted(
        {(c.strategy, c.algo, c.nranks) for c in cells},
        key=lambda k: (k[2], k[0] != "headwise", k[1] != "standard"),
    ):
        row = [f"{strategy} + {algo}", str(p)]
        for n in lengths:
            c = next(
                (c for c in cells if (c.strategy, c.algo, c.nranks, c.prompt_len) == (strategy, algo, p, n)),
                None,
            )
            if c is None or c.run is None:
                row += [c.status if c else "", ""]
                continue
            rss = c.run.get("memory", {}).get("peak_rss_mb")
            row += [fnum(c.run["prefill"]["tokens_per_s"]) + oversub(c), fnum(max(rss)) if rss else "—"]
        rows.append(row)
    head = ["strategy + algorithm", "P"] + [
        x for n in lengths for x in (f"p{n} prefill tok/s", f"p{n} peak RSS MB")
    ]
    layouts = sorted(
        {
            c.run["cell"].get("sequence_layout", "contiguous")
            for c in cells
            if c.run and c.strategy == "sequence"
        }
    )
    lines = [
        "## Long context",
        "",
        "Prefill tokens/s and the largest rank's peak RSS at every prompt length measured"
        + (f" (sequence layout: {', '.join(layouts)})" if layouts else "")
        + ".",
        "",
        *table(head, rows),
        "",
    ]
    for phase in PHASES:
        matched = sorted(
            pairs(
                cells,
                phase,
                lambda c: c.strategy == "sequence" and c.nranks > 1,
                lambda k: ("headwise", *k[1:]),
            ),
            key=lambda m: (m[0].prompt_len, m[0].nranks, m[0].algo != "standard"),
        )
        if not matched:
            continue
        wins = [m for m in matched if m[2] > 1]
        if wins:
            where = "; ".join(f"prompt {a.prompt_len}, P={a.nranks}, {a.algo} (×{r:.2f})" for a, _, r in wins)
            lines.append(
                f"- {phase}: sequence parallelism beats head-wise in {len(wins)} of {len(matched)} matched "
                f"cells: {where}."
            )
        else:
            a, _, r = max(matched, key=lambda m: m[2])
            lines.append(
                f"- {phase}: sequence parallelism never beats head-wise here ({len(matched)} matched cells); "
                f"closest at prompt {a.prompt_len}, P={a.nranks}, {a.algo}: ×{r:.2f} head-wise's tokens/s."
            )
    for a, b, _ in sorted(
        pairs(
            cells,
            "prefill",
            lambda c: c.algo == "online_softmax" and c.prompt_len >= LONG_CONTEXT,
            lambda k: (k[0], "standard", k[2], k[3]),
        ),
        key=lambda m: (m[0].prompt_len, m[0].nranks, m[0].strategy),
    ):
        ma, mb = (max(c.run.get("memory", {}).get("peak_rss_mb") or [math.nan]) for c in (a, b))
        sa, sb = (max(c.run.get("memory", {}).get("attention_scratch_mb") or [math.nan]) for c in (a, b))
        if math.isfinite(ma) and math.isfinite(mb) and ma > 0:
            work = (
                f"; attention working memory standard {fnum(sb)} MB, online_softmax {fnum(sa, 2)} MB "
                f"(×{sb / sa:.0f})"
                if math.isfinite(sa) and math.isfinite(sb) and sa > 0
                else ""
            )
            lines.append(
                f"- peak RSS, prompt {a.prompt_len}, {a.strategy}, P={a.nranks}: standard {fnum(mb)} MB, "
                f"online_softmax {fnum(ma)} MB (standard uses ×{mb / ma:.2f}){work}."
            )
    return lines + [""]


# ----------------------------------------------------------------------------- cost model

PREFERRED_ALGO = "online_softmax"  # the algorithm whose predicted curves the report tabulates


def costmodel_section(cells: list[Cell], model: dict | None, figure: str | None = None) -> list[str]:
    """pipeline.study.costmodel's results/costmodel.json: per model group its calibration, the measured
    cells beside their predictions, and predicted curves beyond this machine; equations last."""
    if not model:
        return []
    lines = [
        "## Cost model",
        "",
        "An alpha-beta + roofline model (`python -m pipeline costmodel`), calibrated on this run's "
        "single-rank cells and on the MPI ping-pong/Allreduce sweep (results/comm.json), predicts every "
        "measured cell and then a cluster this machine cannot be. Its equations are in the appendix.",
        "",
    ]
    groups = model.get("groups", [model])
    for group in groups:
        if len(groups) > 1:
            m = group.get("model", {})
            cfg = m.get("config", {})
            lines += [
                f"### {cfg.get('num_hidden_layers', '?')}-layer model, {m.get('dtype', '?')} weights",
                "",
            ]
        lines += costmodel_group(group)
    for skip in model.get("skipped", []):
        lines += [
            f"- Not modelled ({skip.get('dtype')}, {len(skip.get('cells', []))} cells): {skip.get('reason')}"
        ]
    if figure:
        lines += ["", f"![predicted curves]({figure})", ""]
    eq = model.get("equations_md") or model.get("equations")
    if eq:
        lines += ["## Appendix: the cost model's equations", "", *(eq if isinstance(eq, list) else [eq]), ""]
    return lines


def costmodel_group(group: dict) -> list[str]:
    lines = []
    calib = group.get("calibration") or {}
    if calib:
        rows = []
        for algo, c in sorted(calib.items()):
            if not isinstance(c, dict):
                continue
            rows.append(
                [
                    algo,
                    fnum(c.get("gflops_per_core")),
                    fnum(c.get("attn_gflops_per_core")),
                    fnum(c.get("decode_gflops_per_core")),
                    fnum(c.get("mem_gb_s_per_node")),
                    fnum(c.get("cores_per_node")),
                    f"borrowed from {c['borrowed_from']}"
                    if c.get("borrowed_from")
                    else ", ".join(c.get("cells", [])),
                ]
            )
        lines += [
            "Calibrated on this machine (effective rates, per core; memory bandwidth per node):",
            "",
            *table(
                [
                    "algorithm",
                    "matmul GFLOP/s",
                    "attention GFLOP/s",
                    "decode GFLOP/s",
                    "memory GB/s",
                    "cores",
                    "calibration cells",
                ],
                rows,
            ),
            "",
        ]
        for algo, c in sorted(calib.items()):
            for check in c.get("checks", []) if isinstance(c, dict) else []:
                lines.append(f"- Check ({algo}): {check}")
    intra = group.get("intra_node")
    if intra:
        beta = intra.get("beta_s_per_byte")
        lines += [
            f"Intra-node MPI ({intra.get('source', '?')}): alpha {fnum(1e6 * intra['alpha_s'], 2)} µs, "
            + (f"beta {1e9 * beta:.3g} ns/byte ({fnum(1 / beta / 1e9)} GB/s)." if beta else "beta 0."),
            "",
        ]
    rows = []
    for c in group.get("cells", []):
        for phase in PHASES:
            got, pred = c.get(f"measured_{phase}_tok_s"), c.get(f"predicted_{phase}_tok_s")
            if not (isinstance(got, int | float) and isinstance(pred, int | float) and got):
                continue
            err = c.get(f"{phase}_error_pct", 100 * (pred / got - 1))
            mc, pc = c.get(f"measured_{phase}_comm_s"), c.get(f"predicted_{phase}_comm_s")
            comm = (
                f"{fnum(1e3 * mc, 2)} / {fnum(1e3 * pc, 2)}"
                if isinstance(mc, int | float) and isinstance(pc, int | float)
                else "—"
            )
            used = "calibration" if c.get("calibration_cell") else "held out"
            rows.append(
                [
                    str(c.get("cell")),
                    phase,
                    fnum(got),
                    fnum(pred),
                    f"{err:+.0f}%",
                    comm,
                    str(c.get(f"predicted_{phase}_bound", "—")),
                    used,
                ]
            )
    if rows:
        lines += [
            "Predicted beside measured:",
            "",
            *table(
                [
                    "cell",
                    "phase",
                    "measured tokens/s",
                    "predicted tokens/s",
                    "error",
                    "comm ms measured / predicted",
                    "predicted bound",
                    "cell used for",
                ],
                rows,
            ),
            "",
        ]
        lines += [error_statement(group.get("error") or {}), ""]
    cluster = group.get("cluster") or {}
    if cluster:
        lines += [cluster_statement(cluster), ""]
    lines += curves_tables(group.get("curves", []))
    return lines


def error_statement(e: dict) -> str:
    """The prediction error over the held-out cells (those not used to calibrate), in words."""
    held = e.get("held_out_cells", 0)
    if not held:
        return (
            "Prediction error: every measured cell was used for calibration, so no held-out error "
            "can be stated (measure more than one rank count)."
        )
    parts = []
    for phase in PHASES:
        mean, worst = e.get(f"{phase}_mean_abs_error_pct"), e.get(f"{phase}_max_abs_error_pct")
        if isinstance(mean, int | float):
            parts.append(f"{phase} mean |error| {mean:.0f}% (max {worst:.0f}%)")
    return (
        f"Prediction error over the {held} held-out cells (of {e.get('cells', '?')}; the others calibrated "
        f"the model): " + ", ".join(parts) + "."
    )


def cluster_statement(c: dict) -> str:
    given = c.get("from_config") or []
    return (
        f"Predicted cluster — {c.get('name', '?')}: {c.get('cores_per_node', '?')} cores and "
        f"{fnum(c.get('mem_gb_s_per_node'))} GB/s per node, "
        f"{fnum(c.get('gflops_per_core'))} GFLOP/s per core, "
        f"{c.get('ranks_per_node', '?')} rank(s) per node; "
        f"network alpha {fnum(1e6 * c.get('net_alpha_s', math.nan), 2)} µs, "
        f"{fnum(c.get('net_bandwidth_gb_s'))} GB/s"
        + (
            f" (from the config: {', '.join(given)}; the rest calibrated here)."
            if given
            else " (all calibrated here or defaults)."
        )
    )


def curves_tables(curves: list[dict]) -> list[str]:
    """Predicted tokens/s per strategy x prompt length x ranks for one algorithm, and the fastest strategy."""
    algos = sorted({r.get("attention_algo") for r in curves if r.get("attention_algo")})
    if not curves:
        return []
    algo = PREFERRED_ALGO if PREFERRED_ALGO in algos else (algos[0] if algos else None)
    sel = [r for r in curves if r.get("attention_algo") == algo] if algo else curves
    ranks = sorted({r["nranks"] for r in sel})
    lines = []
    for phase in PHASES:
        table_rows: list[list[str]] = []
        fastest: dict[tuple[int, int], tuple[str, float]] = {}
        for strategy in dict.fromkeys(r["strategy"] for r in sel):
            for n in sorted({r["prompt_len"] for r in sel}):
                row = [strategy, str(n)]
                for p in ranks:
                    r = next(
                        (r for r in sel if (r["strategy"], r["prompt_len"], r["nranks"]) == (strategy, n, p)),
                        None,
                    )
                    v = r.get(f"{phase}_tok_s") if r and r.get("feasible", True) else None
                    row.append(fnum(v))
                    if isinstance(v, int | float) and v > fastest.get((n, p), ("", 0))[1]:
                        fastest[(n, p)] = (strategy, v)
                table_rows.append(row)
        lines += [
            f"Predicted {phase} tokens/s"
            + (f", {algo}" if algo else "")
            + " (— = the engine cannot run it):",
            "",
            *table(["strategy", "prompt", *[f"P={p}" for p in ranks]], table_rows),
            "",
        ]
        winners = {}
        for (n, p), (strategy, _) in fastest.items():
            winners.setdefault(strategy, []).append((n, p))
        lines += [
            f"- fastest predicted {phase}: "
            + "; ".join(
                f"**{s}** in {len(v)} of {len(fastest)} (prompt, P) points"
                for s, v in sorted(winners.items(), key=lambda x: -len(x[1]))
            )
            + ".",
            "",
        ]
    if len(algos) > 1:
        lines += [
            f"The other algorithms' predictions ({', '.join(a for a in algos if a != algo)}) are in "
            "results/costmodel.json.",
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
            anon = r.get("memory", {}).get("anon_mb")
            if anon:
                row["anon_mb_per_rank"] = ";".join(f"{x:.1f}" for x in anon)
            if "sequence_layout" in cell and c.strategy == "sequence":
                row["sequence_layout"] = cell["sequence_layout"]
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
    baselines: dict[int, dict] | None = None,
    costmodel_figure: str | None = None,
    dtype_compare: dict | None = None,
    rank_compare: dict | None = None,
    roofline_compare: dict | None = None,
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
            lines += phase_tables(cells, n, phase, (baselines or {}).get(n))
        lines += scaling_section(cells, n)
        lines += [
            "Figures: " + ", ".join(f"[{Path(f).stem}]({f})" for f in figures.get(n, [])),
            "",
            *[f"![{Path(f).stem}]({f})" for f in figures.get(n, [])],
            "",
        ]
    lines += verification_section(cells, result) + findings_section(cells, result)
    lines += targets_section(cells, rank_compare, roofline_compare)
    lines += baseline_findings(cells, baselines or {})
    lines += (
        dtype_section(dtype_compare)
        + long_context_section(cells)
        + comm_section(cells)
        + roofline_section(cells)
        + memory_section(cells)
        + costmodel_section(cells, costmodel, costmodel_figure)
    )
    return "\n".join(lines).rstrip() + "\n"


def load_baselines(paths: list[str]) -> dict[int, dict]:
    """pipeline.study.baseline results by prompt length; unavailable ones under key 0 (for the reason)."""
    out: dict[int, dict] = {}
    for path in paths:
        try:
            b = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: cannot read baseline JSON ({e})") from None
        out[b["cell"]["prompt_len"] if b.get("available") else 0] = b
    return out


def baseline_findings(cells: list[Cell], baselines: dict[int, dict]) -> list[str]:
    """Our fastest cell against the HF transformers baseline, per prompt length."""
    if not baselines:
        return []
    lines = ["### Against Hugging Face transformers", ""]
    if 0 in baselines:
        lines.append(f"- The HF transformers baseline did not run: {baselines[0].get('reason', '?')}.")
    for n, b in sorted(baselines.items()):
        if n == 0:
            continue
        threads = b["cell"].get("threads", "?")
        for phase in PHASES:
            ours = [c for c in cells if c.run and c.prompt_len == n]
            same = [c for c in ours if c.nranks == 1]
            if not ours:
                continue
            theirs = b[phase]["tokens_per_s"]
            top, top1 = best(ours, phase), (best(same, phase) if same else None)
            text = (
                f"- prompt {n}, {phase}: HF transformers ({threads} threads) {fnum(theirs)} tokens/s; "
                f"our fastest cell ({top.label}, {top.nranks} rank{'s' if top.nranks > 1 else ''}) "
                f"×{top.run[phase]['tokens_per_s'] / theirs:.2f} that"
            )
            if top1 is not None and top1 is not top:
                ratio = top1.run[phase]["tokens_per_s"] / theirs
                text += f", our fastest 1-rank cell ({top1.label}) ×{ratio:.2f}"
            lines.append(text + ".")
    return lines + [""]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
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
    p.add_argument("--costmodel", help="cost model predictions (JSON), shown when given and present")
    p.add_argument(
        "--baseline", nargs="*", default=[], help="pipeline.study.baseline results (JSON), one per length"
    )
    p.add_argument(
        "--dtype-compare", nargs="*", default=[], help="pipeline.study.dtype_compare result (JSON), if run"
    )
    p.add_argument(
        "--rank-compare", nargs="*", default=[], help="pipeline.study.rank_compare result (JSON), if run"
    )
    p.add_argument(
        "--roofline-compare", nargs="*", default=[], help="roofline_compare result (JSON), if run"
    )
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
    from pipeline.report import figures as fig

    for n in sorted({c.prompt_len for c in cells}):
        sub = [c for c in cells if c.prompt_len == n]
        fig.throughput_vs_ranks(sub, n, fig_dir / f"throughput_p{n}.png")
        fig.cells_bars(sub, n, fig_dir / f"cells_p{n}.png")
        figures[n] = [f"figures/throughput_p{n}.png", f"figures/cells_p{n}.png"]
    generated = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    workflow_config = json.loads(args.workflow_config) if args.workflow_config else None
    try:
        costmodel = (
            json.loads(Path(args.costmodel).read_text())
            if args.costmodel and Path(args.costmodel).exists()
            else None
        )
        baselines = load_baselines(args.baseline)
        dtype_compare = [json.loads(Path(p).read_text()) for p in args.dtype_compare]
        rank_compare = [json.loads(Path(p).read_text()) for p in args.rank_compare]
        roofline_compare = [json.loads(Path(p).read_text()) for p in args.roofline_compare]
    except (OSError, ValueError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    costmodel_figure = None
    if costmodel and costmodel.get("groups"):
        fig.costmodel_curves(costmodel["groups"][0], cells, fig_dir / "costmodel.png", PREFERRED_ALGO)
        costmodel_figure = "figures/costmodel.png"
    text = build(
        cells,
        result,
        workflow_config,
        costmodel,
        figures,
        generated,
        args.partial,
        baselines,
        costmodel_figure,
        dtype_compare[0] if dtype_compare else None,
        rank_compare[0] if rank_compare else None,
        roofline_compare[0] if roofline_compare else None,
    )
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
