"""Baselines. Hugging Face transformers on the same checkpoint (pipeline.study.baseline): its numbers,
whether it computed what our reference cell computed, and our fastest cells' tokens/s over its own.
And the baselines measured back to back with our cells (`compare baselines`: llama.cpp on GGUF
files and torch, float32 and bf16): ours over theirs per round (beside_records; dtypes.py states them
per dtype)."""

from __future__ import annotations

import statistics

from pipeline.cells import MANIFEST_DTYPES, REFERENCE_DTYPE
from pipeline.report import verify
from pipeline.report.answers import ranked
from pipeline.report.fmt import PHASES, fnum, ranks, ratio, tok_s
from pipeline.report.load import Cell, matrix_key

DEFAULT_NAME = "HF transformers (torch)"


def phase_numbers(ph: dict) -> dict:
    out = {
        "median_ms": 1e3 * ph["median_s"],
        "ms_per_token": ph["ms_per_token"],
        "tokens_per_s": ph["tokens_per_s"],
        "tokens_per_s_min": ph["tokens_per_s_min"],
        "tokens_per_s_max": ph["tokens_per_s_max"],
    }
    step = ph.get("step_ms") or {}
    if step:
        out.update(step_p50_ms=step.get("p50"), step_p90_ms=step.get("p90"))
    return out


def reference_check(b: dict, cells: list[Cell]) -> dict | None:
    """The baseline against our plainest 1-rank cell at its prompt length (head-wise + standard first)."""
    ones = sorted(
        (c for c in cells if c.run and c.nranks == 1),
        key=lambda c: (c.strategy != "headwise", c.algo != "standard", matrix_key(c)),
    )
    if not ones:
        return None
    ref = ones[0]
    ours, theirs = ref.run["output"], b.get("output", {})
    if theirs.get("prompt_ids") != ours["prompt_ids"]:
        return {"cell": ref.name, "same_prompt": False, "tokens_identical": None, "max_logits_diff": None}
    diff = max(
        verify.max_abs_diff(theirs[k]["first8"], ours[k]["first8"])
        for k in ("prefill_logits", "final_logits")
    )
    return {
        "cell": ref.name,
        "same_prompt": True,
        "tokens_identical": theirs.get("greedy_tokens") == ours["greedy_tokens"],
        "max_logits_diff": diff,
    }


def ours_over_theirs(cells: list[Cell], theirs: float, phase: str) -> dict | None:
    order = ranked(cells, phase)
    if not order:
        return None
    top, top1 = order[0], next((c for c in order if c.nranks == 1), None)
    return {
        "fastest_cell": top.name,
        "fastest_label": top.label,
        "fastest_nranks": top.nranks,
        "fastest_over_baseline": top.tokens_per_s(phase) / theirs,
        "fastest_1rank_cell": top1.name if top1 else None,
        "fastest_1rank_label": top1.label if top1 else None,
        "fastest_1rank_over_baseline": top1.tokens_per_s(phase) / theirs if top1 else None,
    }


def baseline_dtype(b: dict) -> str:
    """The HF baseline's dtype in our cells' names (its JSON says float32 or bf16; float32 when absent)."""
    stored = (b.get("model") or {}).get("dtype") or REFERENCE_DTYPE
    return MANIFEST_DTYPES.get(stored, stored)


def record(b: dict, cells: list[Cell]) -> dict:
    if not b.get("available"):
        return {"available": False, "name": b.get("name", DEFAULT_NAME), "reason": b.get("reason", "?")}
    n = b["cell"]["prompt_len"]
    dtype = baseline_dtype(b)
    sub = [c for c in cells if c.prompt_len == n and c.dtype == dtype]  # ours of its dtype only
    env = b.get("environment", {})
    return {
        "available": True,
        "name": b.get("name", DEFAULT_NAME),
        "prompt_len": n,
        "dtype": dtype,
        "threads": b["cell"].get("threads"),
        "attn_implementation": env.get("attn_implementation"),
        "torch": env.get("torch"),
        "transformers": env.get("transformers"),
        **{phase: phase_numbers(b[phase]) for phase in PHASES},
        "seed_metric": b.get("seed_metric", {}),
        "reference": reference_check(b, sub),
        "ours": {phase: ours_over_theirs(sub, b[phase]["tokens_per_s"], phase) for phase in PHASES},
    }


def records(baselines: list[dict], cells: list[Cell]) -> list[dict]:
    """One record per baseline result: those that did not run first, then by prompt length."""
    recs = [record(b, cells) for b in baselines]
    return sorted(recs, key=lambda b: (b["available"], b.get("prompt_len", 0)))


def table_row(b: dict, phase: str, width: int) -> list[str]:
    """The baseline's row in a 1-rank table of its prompt length (same columns as our cells)."""
    ph = b[phase]
    row = [
        f"*{b['name']}*",
        f"{b['attn_implementation'] or '?'}, {b['threads'] or '?'} threads",
        fnum(ph["median_ms"]),
        fnum(ph["ms_per_token"], 2),
        tok_s(ph["tokens_per_s"], ph["tokens_per_s_min"], ph["tokens_per_s_max"]),
    ]
    if phase == "prefill":
        s = b["seed_metric"]
        row += [fnum(s.get("total_ms")), fnum(s.get("ms_per_token"), 2), fnum(s.get("tokens_per_s"))]
    else:
        row += [
            f"{fnum(ph['step_p50_ms'], 2)} / {fnum(ph['step_p90_ms'], 2)}" if "step_p50_ms" in ph else "—"
        ]
    return row + ["—"] * (width - len(row))


def note(b: dict) -> str:
    """What the baseline row is, and whether it computed what our reference cell computed."""
    text = (
        f"*{b['name']}*: `Qwen3ForCausalLM` from the same checkpoint in {b.get('dtype', REFERENCE_DTYPE)} "
        f"(torch {b['torch'] or '?'}, "
        f"transformers {b['transformers'] or '?'}), the same prompt ids, prefill with logits of the last "
        "position only, then greedy decode on its KV cache (`python -m pipeline baseline`)."
    )
    ref = b["reference"]
    if ref is None:
        return text
    if not ref["same_prompt"]:
        return text + f" **Its prompt differs from {ref['cell']}'s: not comparable.**"
    return text + (
        f" Against {ref['cell']}: greedy tokens {'identical' if ref['tokens_identical'] else '**differ**'}, "
        f"logits (first 8, after prefill and last step) within {verify.fmt_diff(ref['max_logits_diff'])}."
    )


def findings(recs: list[dict]) -> list[str]:
    """Our fastest cell's tokens/s over the baseline's, per prompt length and phase."""
    if not recs:
        return []
    lines = ["### Against Hugging Face transformers", ""]
    for b in recs:
        if not b["available"]:
            lines.append(f"- The HF transformers baseline did not run: {b['reason']}.")
            continue
        for phase in PHASES:
            ours = b["ours"][phase]
            if ours is None:
                continue
            text = (
                f"- prompt {b['prompt_len']}, {phase}: HF transformers"
                + (f" {b['dtype']}" if b.get("dtype", REFERENCE_DTYPE) != REFERENCE_DTYPE else "")
                + f" ({b['threads'] or '?'} threads) "
                f"{fnum(b[phase]['tokens_per_s'])} tokens/s; our fastest cell ({ours['fastest_label']}, "
                f"{ranks(ours['fastest_nranks'])}) {ratio(ours['fastest_over_baseline'])} that"
            )
            if ours["fastest_1rank_cell"] not in (None, ours["fastest_cell"]):
                text += (
                    f", our fastest 1-rank cell ({ours['fastest_1rank_label']}) "
                    f"{ratio(ours['fastest_1rank_over_baseline'])}"
                )
            lines.append(text + ".")
    return lines + [""]


# --- The baselines measured back to back (`python -m pipeline compare baselines`) -------------------
# Each baseline variant's reference is our cell of its dtype, so the comparison's ratio is theirs over
# ours per round; the report states ours over theirs, the same rounds' ratios inverted.

BASELINE_KINDS = ("llamacpp", "torch")


def inverted(rounds: list[float]) -> list[float]:
    return [1.0 / r for r in rounds if r]


def beside_records(doc: dict) -> list[dict]:
    """One record per baseline of a baselines comparison: our cell, its rates, ours over theirs per phase."""
    by_name = {v["name"]: v for v in doc["variants"]}
    out = []
    for v in doc["variants"]:
        if v["kind"] not in BASELINE_KINDS or v.get("reference") not in by_name:
            continue
        ours = by_name[v["reference"]]
        rec = {"baseline": v["name"], "baseline_label": v.get("label", v["name"]), "kind": v["kind"],
               "ours": ours["name"], "ours_label": ours.get("label", ours["name"]),
               "tokens_agree": v.get("tokens_agree")}
        for phase in PHASES:
            rounds = inverted((v.get("ratio_rounds") or {}).get(phase, []))
            rec[f"{phase}_ours"] = ours["median"][phase]
            rec[f"{phase}_baseline"] = v["median"][phase]
            rec[f"{phase}_ours_over_baseline_rounds"] = rounds
            rec[f"{phase}_ours_over_baseline"] = statistics.median(rounds) if rounds else None
        out.append(rec)
    return out


def beside_pointer(doc: dict) -> list[str]:
    """Under a baselines comparison's table: where ours over theirs is stated (the per-dtype section)."""
    if not beside_records(doc):
        return []
    return ["Each baseline's ours over theirs (the rounds' ratios of the table above, inverted), per dtype: "
            "the section *Per dtype: our cells beside llama.cpp and torch* above.", ""]
