"""The report's figures (matplotlib, Agg backend: no display needed).

Each function draws from the report's Cell records (pipeline.report.load.Cell) and always writes its
file, with a "no data" note when nothing was measured, so the workflow's declared outputs exist after a
partial run.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

from model_export.atomic import write_bytes_atomic
from pipeline.cells import DTYPES, MANIFEST_DTYPES, REFERENCE_DTYPE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASES = ("prefill", "decode")
MARKERS = {"headwise": "o", "sequence": "s"}
LINES = {"standard": "-", "online_softmax": "--"}


def _name(c, axis: bool) -> str:
    """A cell's layout in a legend or axis label; its dtype added when the cells hold several."""
    return f"{c.strategy} + {c.algo}" + (f", {c.dtype}" if axis else "")


def _axis(cells) -> bool:
    return len({c.dtype for c in cells}) > 1


def _series(cells, phase):
    """(strategy, algo, dtype) -> sorted [(P, median, min, max)] of measured cells."""
    out: dict[tuple[str, str, str], list] = {}
    for c in cells:
        if c.run is None:
            continue
        p = c.run[phase]
        out.setdefault((c.strategy, c.algo, c.dtype), []).append(
            (c.nranks, p["tokens_per_s"], p["tokens_per_s_min"], p["tokens_per_s_max"])
        )
    return {k: sorted(v) for k, v in sorted(out.items())}


def throughput_vs_ranks(cells: list, prompt_len: int, path: str | Path) -> None:
    """tokens/s (median, min-max bars) against rank count, one line per strategy x algorithm; one row
    of panels per dtype (float32 first), so a dtype's lines are read against its own."""
    dtypes = [d for d in DTYPES if any(c.dtype == d for c in cells)] or [REFERENCE_DTYPE]
    fig, grid = plt.subplots(len(dtypes), 2, figsize=(10, 4 * len(dtypes)), squeeze=False)
    ranks = sorted({c.nranks for c in cells})
    for row, dtype in zip(grid, dtypes, strict=True):
        named = f", {dtype}" if len(dtypes) > 1 else ""
        for ax, phase in zip(row, PHASES, strict=False):
            series = _series([c for c in cells if c.dtype == dtype], phase)
            for (strategy, algo, _), points in series.items():
                xs = [p[0] for p in points]
                ys = [p[1] for p in points]
                err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
                ax.errorbar(xs, ys, yerr=err, marker=MARKERS.get(strategy, "^"),
                            linestyle=LINES.get(algo, ":"), capsize=3, label=f"{strategy} + {algo}")
            if not series:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xscale("log", base=2)
            if ranks:
                ax.set_xticks(ranks, [str(r) for r in ranks])
            ax.set_xlabel("MPI ranks")
            ax.set_ylabel("tokens/s (median; bars: min-max)")
            ax.set_title(f"{phase}, prompt {prompt_len}{named}")
            ax.grid(True, alpha=0.3)
            if series:
                ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def cells_bars(cells: list, prompt_len: int, path: str | Path) -> None:
    """Prefill and decode tokens/s of every cell; missing and not-applicable cells labelled."""
    labels = [f"{_name(c, _axis(cells))} P={c.nranks}" for c in cells]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * max(len(cells), 4) + 1.5))
    for ax, phase in zip(axes, PHASES, strict=False):
        ys = list(range(len(cells)))
        for y, c in zip(ys, cells, strict=False):
            if c.run is None:
                ax.text(0, y, f" {c.status}", va="center", fontsize=8, color="gray")
                continue
            p = c.run[phase]
            ax.barh(
                y,
                p["tokens_per_s"],
                color=f"C{['headwise', 'sequence'].index(c.strategy) % 10}"
                if c.strategy in ("headwise", "sequence")
                else "C2",
                hatch="//" if c.algo == "online_softmax" else None,
                edgecolor="black",
                linewidth=0.5,
                xerr=[
                    [p["tokens_per_s"] - p["tokens_per_s_min"]],
                    [p["tokens_per_s_max"] - p["tokens_per_s"]],
                ],
                capsize=2,
            )
        ax.set_yticks(ys, labels if phase == "prefill" else [""] * len(ys), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("tokens/s (median; bars: min-max)")
        ax.set_title(f"{phase}, prompt {prompt_len}")
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def costmodel_curves(group: dict, cells: list, path: str | Path, algo: str = "online_softmax") -> None:
    """Predicted tokens/s against ranks on the configured cluster (pipeline.study.costmodel's curves), one
    line per strategy at a few prompt lengths, with this machine's measured cells as black crosses."""
    curves = group.get("curves", [])
    dtype = MANIFEST_DTYPES.get((group.get("model") or {}).get("dtype"), REFERENCE_DTYPE)
    cells = [c for c in cells if c.dtype == dtype]  # the model's calibration dtype only
    algos = sorted({r.get("attention_algo") for r in curves})
    algo = algo if algo in algos else (algos[0] if algos else algo)
    rows = [r for r in curves if r.get("attention_algo") == algo and r.get("feasible", True)]
    lengths = sorted({r["prompt_len"] for r in rows})
    shown = sorted({lengths[0], lengths[len(lengths) // 2], lengths[-1]}) if lengths else []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {"headwise": ("o", "-"), "sequence": ("s", "--"), "sequence_zigzag": ("D", ":")}
    for ax, phase in zip(axes, PHASES, strict=False):
        for i, n in enumerate(shown):
            for strategy, (marker, line) in styles.items():
                pts = sorted(
                    (r["nranks"], r[f"{phase}_tok_s"])
                    for r in rows
                    if r["strategy"] == strategy and r["prompt_len"] == n
                )
                if pts:
                    ax.plot(
                        *zip(*pts, strict=False),
                        marker=marker,
                        linestyle=line,
                        color=f"C{i}",
                        markersize=4,
                        label=f"{strategy}, prompt {n}",
                    )
        measured = [
            (c.nranks, c.run[phase]["tokens_per_s"])
            for c in cells
            if c.run and c.algo == algo and c.prompt_len in shown
        ]
        if measured:
            ax.scatter(
                *zip(*measured, strict=False), marker="x", color="black", zorder=5, label="measured here"
            )
        if not rows:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("MPI ranks")
        ax.set_ylabel("tokens/s (predicted)")
        ax.set_title(f"{phase}, {algo}: {group.get('cluster', {}).get('name', 'cluster')}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if rows:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    """The PNG, written atomically (rendered in memory, then renamed into place)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
