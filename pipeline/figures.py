"""The report's figures (matplotlib, Agg backend: no display needed).

Each function draws from the report's Cell records and always writes its file, with a "no data"
note when nothing was measured, so the workflow's declared outputs exist after a partial run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASES = ("prefill", "decode")
MARKERS = {"headwise": "o", "sequence": "s"}
LINES = {"standard": "-", "online_softmax": "--"}


def _series(cells, phase):
    """(strategy, algo) -> sorted [(P, median, min, max)] of measured cells."""
    out: dict[tuple[str, str], list] = {}
    for c in cells:
        if c.run is None:
            continue
        p = c.run[phase]
        out.setdefault((c.strategy, c.algo), []).append(
            (c.nranks, p["tokens_per_s"], p["tokens_per_s_min"], p["tokens_per_s_max"])
        )
    return {k: sorted(v) for k, v in sorted(out.items())}


def throughput_vs_ranks(cells, prompt_len: int, path: str | Path) -> None:
    """tokens/s (median, min-max bars) against rank count, one line per strategy x algorithm."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ranks = sorted({c.nranks for c in cells})
    for ax, phase in zip(axes, PHASES, strict=False):
        series = _series(cells, phase)
        for (strategy, algo), points in series.items():
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
            ax.errorbar(
                xs,
                ys,
                yerr=err,
                marker=MARKERS.get(strategy, "^"),
                linestyle=LINES.get(algo, ":"),
                capsize=3,
                label=f"{strategy} + {algo}",
            )
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xscale("log", base=2)
        if ranks:
            ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("MPI ranks")
        ax.set_ylabel("tokens/s (median; bars: min-max)")
        ax.set_title(f"{phase}, prompt {prompt_len}")
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def cells_bars(cells, prompt_len: int, path: str | Path) -> None:
    """Prefill and decode tokens/s of every cell; missing and not-applicable cells labelled."""
    labels = [f"{c.strategy} {c.algo} P={c.nranks}" for c in cells]
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


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
