"""The report's back-to-back comparisons: read `python -m pipeline compare` JSONs, state them.

    docs = load(["results/compare/dtype.json", "results/compare/ranks.json"])
    rows = records(docs)    # plain data, one per variant (summary.json)
    lines = section(docs)   # markdown: one table per comparison

Each comparison ran its variants in alternating (ABBA) rounds; a variant's ratio is its rate over
its reference's within each round (two runs adjacent in time), and the median over the rounds.
This module states the measurements and the ratios; it does not grade them. It reads JSON only.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from pipeline.report import baselines

PHASES = ("prefill", "decode")
REQUIRED = ("name", "question", "rounds", "units", "variants")


def load(paths: list[str]) -> list[dict]:
    """The comparison JSONs at `paths`, in order; ValueError naming the file that is not one."""
    docs = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"comparison {path}: cannot be read as JSON ({e})") from None
        missing = [k for k in REQUIRED if k not in doc]
        if missing:
            raise ValueError(f"comparison {path}: not a `pipeline compare` result (no {', '.join(missing)})")
        for v in doc["variants"]:
            v["read_fractions"] = read_fractions(v)
        docs.append(doc)
    return docs


def read_fractions(variant: dict) -> list[float]:
    """An engine variant's decode over its own weight reads, one per round: each round's bench JSON
    (its `files`) reads the weights between decode steps (ext.ops.StreamSet, the goal's streaming
    ceiling) and keeps the median fraction; [] for other kinds or where a round's file is gone."""
    if variant.get("kind") != "bench":
        return []
    out = []
    for name in variant.get("files", []):
        try:
            fraction = (json.loads(Path(name).read_text()).get("roofline") or {}).get("decode_fraction")
        except (OSError, json.JSONDecodeError):
            return []
        if fraction is None:
            return []
        out.append(fraction)
    return out


ACCURACY = ("nmse", "kl_mean", "top1_agreement")  # of a variant's accuracy (compare --reference-cache)


def records(docs: list[dict]) -> list[dict]:
    """One flat record per variant of every comparison: its medians, and its ratios over its reference
    (a baseline's also ours over it); one record of kind "skipped" per variant left out, with the reason."""
    out = []
    for doc in docs:
        beside = {r["baseline"]: r for r in baselines.beside_records(doc)}
        for v in doc["variants"]:
            rec = {"comparison": doc["name"], "variant": v["name"], "label": v.get("label", v["name"]),
                   "kind": v["kind"], "reference": v.get("reference"), "rounds": doc["rounds"],
                   "prompt_len": (doc.get("run") or {}).get("prompt_len")}
            for phase in PHASES:
                rec[f"{phase}_unit"] = doc["units"][phase]
                rec[f"{phase}_median"] = v["median"][phase]
                rec[f"{phase}_rounds"] = list(v["rounds"][phase])
                ratio = v.get("ratio") or {}
                rec[f"{phase}_ratio"] = ratio.get(phase)
                rec[f"{phase}_ratio_rounds"] = list((v.get("ratio_rounds") or {}).get(phase, []))
                if v["name"] in beside:
                    for key in (f"{phase}_ours_over_baseline", f"{phase}_ours_over_baseline_rounds"):
                        rec[key] = beside[v["name"]][key]
            fractions = v.get("read_fractions") or []
            rec["decode_read_fraction"] = statistics.median(fractions) if fractions else None
            rec["decode_read_fraction_rounds"] = list(fractions)
            rec["tokens_agree"] = v.get("tokens_agree")
            accuracy = v.get("accuracy") or {}  # against the float32 reference run, where measured
            rec.update({k: accuracy.get(k) for k in ACCURACY})
            out.append(rec)
        out += [{"comparison": doc["name"], "kind": "skipped", "reason": line}
                for line in doc.get("skipped", [])]
    return out


def fnum(x: float | None) -> str:
    """A rate with three significant figures (at least one decimal below 100); "—" for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def sig3(x: float) -> str:
    """Three significant figures, trailing zeros kept: 1.00, 0.955, 0.00484 (177, not "177.")."""
    return f"{x:#.3g}".rstrip(".")


def ratio_text(median: float | None, rounds: list[float]) -> str:
    """"×0.971 (0.952 / 0.971 / 1.02)": the median of the per-round ratios, then each round's."""
    if median is None:
        return "—"
    return f"×{sig3(median)} ({' / '.join(sig3(r) for r in rounds)})"


def agree_text(rec: dict) -> str:
    if rec["reference"] is None:
        return "(reference)"
    return {True: "yes", False: "**no**", None: "—"}[rec["tokens_agree"]]


def comparison_table(doc: dict, recs: list[dict]) -> list[str]:
    units = doc["units"]
    head = [
        "variant",
        "reference",
        f"prefill {units['prefill']} per round",
        f"decode {units['decode']} per round",
        "prefill over reference",
        "decode over reference",
        "greedy tokens agree",
    ]
    labels = {rec["variant"]: rec["label"] for rec in recs}
    rows = []
    for rec in recs:
        rows.append([
            rec["label"],
            labels.get(rec["reference"], rec["reference"]) or "—",
            *(" / ".join(fnum(x) for x in rec[f"{phase}_rounds"]) for phase in PHASES),
            *(ratio_text(rec[f"{phase}_ratio"], rec[f"{phase}_ratio_rounds"]) for phase in PHASES),
            agree_text(rec),
        ])
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(row) + " |" for row in rows)]


def machine_text(doc: dict) -> str:
    m = doc.get("machine") or {}
    facts = [m.get("cpu_model"), f"{m['cores']} cores" if "cores" in m else None, m.get("hostname"),
             m.get("timestamp")]
    return ", ".join(str(f) for f in facts if f) or "not recorded"


def run_text(doc: dict) -> str:
    """ "1 round; each run: prompt 128 tokens, 32 decode steps, 3 timed iterations after 1 warm-up"."""
    n = doc["rounds"]
    text = f"{n} round{'s' * (n != 1)}"
    run = doc.get("run") or {}
    if {"prompt_len", "gen_len", "iters", "warmup"} <= run.keys():
        text += (f"; each run: prompt {run['prompt_len']} tokens, {run['gen_len']} decode steps, "
                 f"{run['iters']} timed iterations after {run['warmup']} warm-up")
    return text


def notes(doc: dict) -> list[str]:
    """A bullet per program of another project (what it ran as) and per variant left out, then a
    blank line; nothing when there are none."""
    lines = [f"- {v['label']}: {v['build']}." for v in doc["variants"] if v.get("build")]
    lines += [f"- {line}." for line in doc.get("skipped", [])]
    return [*lines, ""] if lines else []


def section(docs: list[dict]) -> list[str]:
    """Markdown lines: an introduction, then per comparison its question, its table, its machine."""
    if not docs:
        return []
    lines = [
        "## Back-to-back comparisons",
        "",
        "Each comparison runs its variants one after the other, every round in the reverse order of "
        "the one before (ABBA), so a steady drift of the machine's speed favours none of them. A ratio "
        "is a variant's rate over its reference's within one round, between runs adjacent in time; the "
        "median is over the rounds (`python -m pipeline compare`, pipeline/study/compare.py).",
        "",
    ]
    by_name = {}
    for rec in records(docs):
        if rec["kind"] != "skipped":
            by_name.setdefault(rec["comparison"], []).append(rec)
    for doc in docs:
        lines += [
            f"### {doc['name']}: {doc['question']}",
            "",
            *comparison_table(doc, by_name.get(doc["name"], [])),
            "",
            *baselines.beside_pointer(doc),
            *notes(doc),
            f"{run_text(doc)}. Machine: {machine_text(doc)}.",
            "",
        ]
    return lines
