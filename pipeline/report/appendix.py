"""Where the numbers come from: the machine and software every cell ran on (values that differ between
cells are all listed and flagged), the model, and the appendices (configuration, equations, provenance)."""

from __future__ import annotations

import json

from pipeline.report.fmt import table

ENVIRONMENT_KEYS = (
    "cpu_model",
    "cores",
    "simd_lanes",
    "hostname",
    "mpi_library",
    "mpi_version",
    "python",
    "numpy",
)
MODEL_KEYS = ("dtype", "checkpoint_digest")


def distinct(values: list) -> list:
    """The different values, sorted as text ("?" for a missing one)."""
    return sorted({"?" if v is None else v for v in values}, key=str)


def machine(runs: list[dict]) -> dict | None:
    """The machine, software and model of the measured cells; `differs` names the fields whose values
    are not the same in every cell (cells from two machines must not pass as one)."""
    if not runs:
        return None
    env = [r.get("environment", {}) for r in runs]
    models = [r.get("model", {}) for r in runs]
    out: dict = {k: distinct([e.get(k) for e in env]) for k in ENVIRONMENT_KEYS}
    out.update({k: distinct([m.get(k) for m in models]) for k in MODEL_KEYS})
    seq = [
        r["cell"].get("sequence_layout", "contiguous")
        for r in runs
        if r["cell"]["parallel_strategy"] == "sequence"
    ]
    out["sequence_layout"] = distinct(seq) if seq else None
    # the model's dtype is an axis of the matrix, not a difference between machines
    out["differs"] = [k for k, v in out.items() if isinstance(v, list) and len(v) > 1 and k != "dtype"]
    stamps = sorted(e["timestamp"] for e in env if e.get("timestamp"))
    first = models[0]
    out.update(
        measured_from=stamps[0] if stamps else None,
        measured_to=stamps[-1] if stamps else None,
        synthetic=bool(first.get("synthetic")),
        config=first.get("config", {}),
        num_parameters=first.get("num_parameters"),
        ranks_x_threads=sorted(
            {f"{r['cell']['nranks']} x {r['cell'].get('threads_per_rank', '?')}" for r in runs},
            key=lambda x: int(x.split()[0]),
        ),
        oversubscribed_cells=sum(bool(e.get("oversubscribed")) for e in env),
    )
    return out


def shown(m: dict, key: str) -> str:
    values = m[key]
    if values is None:
        return "—"
    text = " / ".join(str(v) for v in values)
    return text + " (differs between cells!)" if key in m.get("differs", [key]) and len(values) > 1 else text


def machine_line(m: dict) -> str:
    """CPU, cores, SIMD width and host, as one phrase."""
    return (
        f"{shown(m, 'cpu_model')}, {shown(m, 'cores')} cores, {shown(m, 'simd_lanes')}-lane float vectors "
        f"(host {shown(m, 'hostname')})"
    )


def architecture(cfg: dict) -> str:
    if not cfg:
        return "—"
    return (
        f"{cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
        f"{cfg.get('num_attention_heads')} query / {cfg.get('num_key_value_heads')} KV heads, "
        f"head_dim {cfg.get('head_dim')}, intermediate {cfg.get('intermediate_size')}, "
        f"vocab {cfg.get('vocab_size')}"
    )


def provenance_lines(m: dict | None) -> list[str]:
    lines = ["## Appendix: provenance", ""]
    if m is None:
        return lines + ["No cell produced a result.", ""]
    kind = "synthetic (random weights, real architecture)" if m["synthetic"] else "real checkpoint"
    params = m["num_parameters"]
    rows = [
        ["measured", f"{m['measured_from']} … {m['measured_to']}" if m["measured_from"] else "—"],
        ["machine", machine_line(m)],
        ["MPI", f"{shown(m, 'mpi_library')} (MPI {shown(m, 'mpi_version')})"],
        ["software", f"Python {shown(m, 'python')}, NumPy {shown(m, 'numpy')}"],
        ["model", f"Qwen3, {kind}: {architecture(m['config'])}"],
        [
            "parameters",
            f"{params / 1e6:.1f} M, stored as {shown(m, 'dtype')}" if params else shown(m, "dtype"),
        ],
        ["checkpoint digest", f"`{shown(m, 'checkpoint_digest')}`"],
        ["sequence layout", shown(m, "sequence_layout")],
        ["ranks x threads", ", ".join(m["ranks_x_threads"])],
    ]
    return lines + [*table(["", ""], rows), ""]


def configuration_lines(workflow_config: dict | None) -> list[str]:
    if not workflow_config:
        return []
    return [
        "## Appendix: workflow configuration",
        "",
        "```json",
        json.dumps(workflow_config, indent=1, sort_keys=True),
        "```",
        "",
    ]


def equations_lines(costmodel: dict | None) -> list[str]:
    if not costmodel or not costmodel["equations_md"]:
        return []
    return ["## Appendix: the cost model's equations", "", costmodel["equations_md"], ""]
