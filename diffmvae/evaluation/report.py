"""Writing evaluation results: ``metrics.json`` (summaries), ``metrics.csv`` / ``metrics.md`` (one row per model,
metric, k and target, through pandas) and ``metrics.png`` (coherence, FD and latent probe against the number
of observed modalities, one line per model, as in Wesego & Rooshenas 2024 Fig. 7)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from diffmvae.io import check_out_dir, markdown_table, write_files

COLUMNS = ["model", "metric", "k", "target", "value"]
FILES = ("metrics.json", "metrics.csv", "metrics.md", "metrics.png")


def metrics_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a DataFrame with columns ``model, metric, k, target, value``."""
    return pd.DataFrame(list(rows), columns=COLUMNS)


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub markdown table of the summary: one row per model, metric and k (``mean`` targets), models as columns."""
    mean = table[table["target"].isin(["mean", "all"])]
    wide = mean.pivot_table(index=["metric", "k"], columns="model", values="value", sort=False).reset_index()
    return markdown_table(list(wide.columns), wide.itertuples(index=False), lambda v: f"{v:.{digits}g}" if isinstance(v, float) else str(v))


def plot_metrics(table: pd.DataFrame, path: Path) -> None:
    """Coherence, both Fréchet distances and latent-probe accuracy against the number of observed modalities;
    unconditional values as a marker at k = 0."""
    panels = [("coherence", "coherence_unconditional", "all", "conditional coherence"),
              ("fd", "fd_unconditional", "mean", "Fréchet distance (classifier features)"),
              ("fd_pca", "fd_pca_unconditional", "mean", "Fréchet distance (pixel PCA, label-free)"),
              ("latent_probe", None, None, "latent linear probe accuracy")]
    from matplotlib.figure import Figure  # heavy: matplotlib only when a figure is drawn

    fig = Figure(figsize=(17, 3.8), dpi=110)
    axes = fig.subplots(1, len(panels))
    for ax, (metric, uncond, uncond_target, title) in zip(axes, panels):
        for i, (model, group) in enumerate(table.groupby("model", sort=False)):
            color = f"C{i}"
            line = group[(group["metric"] == metric) & (group["target"] == "mean")].sort_values("k")
            ax.plot(line["k"], line["value"], "o-", color=color, label=model)
            if uncond is not None:
                u = group[(group["metric"] == uncond) & (group["target"] == uncond_target)]
                ax.plot(u["k"], u["value"], "s", color=color, markerfacecolor="none", markersize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("observed modalities k (0: unconditional, open squares)" if uncond else "modalities in the subset k")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def write_report(out: str | os.PathLike, summaries: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[Path]:
    """Write the four files into ``out`` via a temporary folder and renames: existing files are replaced whole
    or not at all. ``metrics.json`` holds the summary object for one model, a list for several."""
    out = check_out_dir(out)
    table = metrics_table(rows)
    payload = summaries[0] if len(summaries) == 1 else list(summaries)
    meta = ", ".join(f"{s['model']}: n_samples={s['n_samples']}, seed={s['seed']}, prior={s['prior']}" for s in summaries)
    writers = {
        "metrics.json": lambda path: path.write_text(json.dumps(payload, indent=2)),
        "metrics.csv": lambda path: table.to_csv(path, index=False),
        "metrics.md": lambda path: path.write_text(f"# Evaluation\n\n{meta}\n\n" + to_markdown(table)),
        "metrics.png": lambda path: plot_metrics(table, path),
    }
    return write_files(out, writers)
