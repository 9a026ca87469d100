"""The report of an experiment pipeline (:mod:`diffmvae.pipeline`): one table row per run and prior from each finished
evaluation's ``metrics.json``, written as CSV and markdown, and the plots of Wesego & Rooshenas 2024 Fig. 7."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from diffmvae.io import DiffMVAEError, atomic_write, markdown_table
from diffmvae.pipeline.spec import PipelineSpec

log = logging.getLogger(__name__)


def collect(spec: PipelineSpec) -> list[dict[str, Any]]:
    """One row per (run, prior): the sweep value, the model, the conditional metrics per k (``evaluate``) and the
    unconditional ones under that prior, from each finished evaluation's ``metrics.json``."""
    rows = []
    for run in spec.runs():
        folder = spec.out / run.name
        for stage in sorted(folder.glob("*.done.json")) if folder.is_dir() else []:
            name = stage.name.removesuffix(".done.json")
            metrics = folder / name / "metrics.json"
            if not (name == "evaluate" or name.startswith("unconditional_")) or not metrics.is_file():
                continue
            summary = json.loads(metrics.read_text())
            row = {"run": run.name, "model": run.model.name, spec.sweep_name or "sweep": run.sweep_value, "prior": summary["prior"],
                   "coherence_unconditional": summary["coherence"]["unconditional"], "fd_unconditional": summary["fd"]["unconditional"],
                   "fd_pca_unconditional": (summary.get("fd_pca") or {}).get("unconditional")}
            if name == "evaluate":
                row.update({f"coherence_k{k}": v for k, v in summary["coherence"]["conditional"].items()})
                row.update({f"fd_k{k}": v for k, v in summary["fd"]["conditional"].items()})
                row.update({f"fd_pca_k{k}": v for k, v in ((summary.get("fd_pca") or {}).get("conditional") or {}).items()})
                row.update({f"probe_k{k}": v for k, v in (summary.get("latent_probe") or {}).items()})
                row.update({f"f1_k{k}": v for k, v in (summary.get("f1") or {}).items()})
                row.update({f"nll_per_token_{m}": v for m, v in (summary.get("text_nll_per_token") or {}).items()})
                for key, values in (summary.get("mask") or {}).items():
                    row.update({f"mask_{key}_k{k}": v for k, v in values.items()})
            rows.append(row)
    return rows


def write_pipeline_report(spec: PipelineSpec) -> list[Path]:
    """``OUT/table.csv``, ``OUT/table.md`` (one row per run and prior) and ``OUT/plots.png``: with a sweep,
    unconditional coherence and FD against the sweep value, one line per (model, prior) (Wesego & Rooshenas 2024 Fig. 7a);
    conditional coherence and FD against the number of observed modalities, one line per run (Fig. 7b/c)."""
    import pandas as pd  # heavy: pandas only when a report is written

    rows = collect(spec)
    if not rows:
        raise DiffMVAEError(f"no finished evaluation under {spec.out}; nothing to report")
    table = pd.DataFrame(rows)
    x = spec.sweep_name or "sweep"
    if table[x].isna().all():
        table = table.drop(columns=[x])
    csv, md, png = spec.out / "table.csv", spec.out / "table.md", spec.out / "plots.png"
    atomic_write(csv, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(md, lambda tmp: tmp.write_text(_markdown(table)))
    atomic_write(png, lambda tmp: _plot(table, x if x in table else None, tmp))
    log.info("wrote %s, %s, %s", csv, md, png)
    return [csv, md, png]


def _markdown(table: Any) -> str:
    cols = [c for c in table.columns if c != "run"]

    def cell(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" if isinstance(v, float) else str(v)

    return markdown_table(cols, table[cols].itertuples(index=False), cell)


UNCONDITIONAL = {"coherence_unconditional": "coherence", "fd_unconditional": "Fréchet distance, judges' features",
                 "fd_pca_unconditional": "Fréchet distance, pixel PCA"}
CONDITIONAL = {"coherence_k": "coherence", "fd_k": "Fréchet distance, judges' features", "fd_pca_k": "Fréchet distance, pixel PCA"}


def _plot(table: Any, x: str | None, path: Path) -> None:
    """Top row: the unconditional metrics against the sweep value, a line per (model, prior) (bars per model without a
    sweep); bottom row: the conditional ones against the number of observed modalities, a line per run. A column per
    metric the table holds: coherence, and the Fréchet distance in each feature space."""
    import pandas as pd  # heavy: pandas only when a report is written
    from matplotlib.figure import Figure  # heavy: matplotlib only when a figure is drawn

    metrics = [m for m in UNCONDITIONAL if m in table and table[m].notna().any()]
    ks = {p: sorted(int(c.removeprefix(p)) for c in table.columns if c.startswith(p) and c.removeprefix(p).isdigit())
          for p in CONDITIONAL}  # the numbers of observed modalities each conditional metric has columns for
    prefixes = [p for p in CONDITIONAL if ks[p]]
    fig = Figure(figsize=(4 * max(len(metrics), len(prefixes), 1), 7.2), dpi=110)
    top, bottom = fig.subplots(2, max(len(metrics), len(prefixes), 1), squeeze=False)
    models = list(table["model"].unique())
    if x is not None:
        for (model, prior), group in table.groupby(["model", "prior"], sort=False):
            group = group.sort_values(x)
            for ax, metric in zip(top, metrics):
                ax.plot(group[x].astype(float), group[metric].astype(float), "o-" if prior == "score" else "s--",
                        color=f"C{models.index(model)}", label=f"{model} ({prior} prior)")
        for ax in top:
            ax.set_xlabel(x)
            ax.xaxis.get_major_locator().set_params(integer=True)
    else:  # no sweep: one group of bars per model, a bar per prior
        priors = list(table["prior"].unique())
        width = 0.8 / len(priors)
        for j, prior in enumerate(priors):
            rows = table[table["prior"] == prior].set_index("model").reindex(models)
            for ax, metric in zip(top, metrics):
                ax.bar([i + (j - (len(priors) - 1) / 2) * width for i in range(len(models))], rows[metric].astype(float), width,
                       label=f"{prior} prior", color=f"C{j}")
        for ax in top:
            ax.set_xticks(range(len(models)), models, fontsize=8)
    for ax, metric in zip(top, metrics):
        ax.set_title(f"unconditional {UNCONDITIONAL[metric]}", fontsize=10)
        ax.grid(alpha=0.3)
    if metrics:
        top[0].legend(fontsize=7)
    conditional = table[[c for c in table.columns if c.startswith("coherence_k")]].notna().any(axis=1)
    for i, (_, row) in enumerate(table[conditional].iterrows()):
        for ax, prefix in zip(bottom, prefixes):
            row_ks = [k for k in ks[prefix] if not pd.isna(row[f"{prefix}{k}"])]
            ax.plot(row_ks, [row[f"{prefix}{k}"] for k in row_ks], "o-", label=row["run"], color=f"C{i % 10}")
    for ax, prefix in zip(bottom, prefixes):
        ax.set_title(f"conditional {CONDITIONAL[prefix]}", fontsize=10)
        ax.set_xlabel("observed modalities k")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in list(top[len(metrics):]) + list(bottom[len(prefixes):]):
        ax.set_axis_off()
    if conditional.any() and prefixes:
        bottom[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, format="png")
