"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend state).

Per protocol and metric: a heatmap (model × dataset, a panel per size) and size curves (a panel per
dataset, a line per model), as in the paper's figures; for protocol ``paper`` also a paper-vs-cbmir
scatter. Missing cells stay blank or gaps; the study's models keep one colour in every figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.layout import paper_grid, safe_name
from cbmir.report.cells import Cell
from cbmir.report.naming import dataset_label, dataset_order, metric_order, model_label, model_order
from cbmir.report.paper import PAPER_METRICS
from cbmir.report.tables import value_grid

#: The scatter of protocol ``paper`` against the published numbers.
PAPER_SCATTER = "paper_vs_cbmir.png"


def write_figures(cells: Sequence[Cell], comparison: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """Every figure of one protocol into ``folder``: ``heatmap_<metric>.png``, ``sizes_<metric>.png``, the scatter.

    Old PNGs there are removed first, so a metric gone from the inputs does not leave its figure behind.
    """
    for stale in folder.glob("*.png") if folder.is_dir() else []:
        stale.unlink()
    files = []
    for metric in metric_order(m for c in cells for m in c.metrics):
        for make, stem in ((heatmap_figure, "heatmap"), (size_curves_figure, "sizes")):
            files.append(make(cells, metric, folder / f"{stem}_{metric_slug(metric)}.png"))
    if comparison:
        files.append(paper_scatter_figure(comparison, folder / PAPER_SCATTER))
    return [f for f in files if f]


def metric_slug(metric: str) -> str:
    """A metric in a file name: ``mAP@5`` -> ``mAP5``."""
    return safe_name(metric.replace("@", ""))


def _figure(width: float, height: float):
    """A Figure on the Agg canvas without pyplot: no global backend state, safe in any process."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def model_colors(models: Sequence[str]) -> dict[str, Any]:
    """Stable colours: the study's 9 models keep theirs in every figure, others follow."""
    from matplotlib import colormaps

    study = paper_grid()["model"]
    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    colors, extra = {}, 0
    for m in models:
        if m in study:
            colors[m] = tab10(study.index(m))
        else:
            colors[m] = tab20((2 * extra + 1) % 20)
            extra += 1
    return colors


def heatmap_figure(cells: Sequence[Cell], metric: str, path: Path) -> Path | None:
    """Model × dataset heatmaps of one metric, a panel per size, one colour scale; missing cells blank."""
    grid = value_grid(cells, lambda c: c.metrics.get(metric))
    if not grid:
        return None
    models = model_order(m for _, _, m in grid)
    datasets = dataset_order(d for d, _, _ in grid)
    sizes = sorted({s for _, s, _ in grid})
    values = np.array(list(grid.values()))
    vmin, vmax = float(values.min()), float(values.max())
    vmax = vmax if vmax > vmin else vmin + 1.0
    ncols = min(2, len(sizes))
    nrows = math.ceil(len(sizes) / ncols)
    fig = _figure(ncols * (1.6 + 0.85 * len(datasets)), nrows * (1.2 + 0.38 * len(models)) + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="white")
    image = None
    for ax, size in zip(axes, sizes, strict=False):
        mat = np.full((len(models), len(datasets)), np.nan)
        for i, m in enumerate(models):
            for j, d in enumerate(datasets):
                mat[i, j] = grid.get((d, size, m), np.nan)
        image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(models)):
            for j in range(len(datasets)):
                if np.isfinite(mat[i, j]):
                    light = (mat[i, j] - vmin) / (vmax - vmin) > 0.55
                    ax.text(
                        j,
                        i,
                        f"{mat[i, j]:.1f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if light else "white",
                    )
        ax.set_xticks(range(len(datasets)), [dataset_label(d) for d in datasets], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), [model_label(m) for m in models], fontsize=8)
        ax.set_title(f"{size} px", fontsize=10)
    for ax in axes[len(sizes) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes[: len(sizes)].tolist(), shrink=0.8, label=f"{metric} (%)")
    fig.suptitle(f"{metric} (%) by model and dataset")
    return _save(fig, path)


def size_curves_figure(cells: Sequence[Cell], metric: str, path: Path) -> Path | None:
    """Metric vs size, a line per model, a panel per dataset (as the paper's figures); gaps stay gaps."""
    grid = value_grid(cells, lambda c: c.metrics.get(metric))
    if not grid:
        return None
    models = model_order(m for _, _, m in grid)
    datasets = dataset_order(d for d, _, _ in grid)
    colors = model_colors(models)
    ncols = min(4, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = _figure(3.2 * ncols + 1.8, 2.7 * nrows + 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, d in zip(axes, datasets, strict=False):
        sizes = sorted({s for dd, s, _ in grid if dd == d})
        for m in models:
            ys = np.array([grid.get((d, s, m), np.nan) for s in sizes])
            if np.isfinite(ys).any():
                ax.plot(sizes, ys, marker="o", markersize=4, color=colors[m], label=model_label(m))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(dataset_label(d), fontsize=10)
        ax.set_xlabel("size (px)", fontsize=8)
        ax.set_ylabel(f"{metric} (%)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    _legend(fig, axes[: len(datasets)], [model_label(m) for m in models])
    fig.suptitle(f"{metric} (%) vs image size")
    return _save(fig, path)


def paper_scatter_figure(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """cbmir (y) against the paper (x) per metric, a colour per model, the diagonal = exact reproduction."""
    pairs = [r for r in rows if r["paper"] is not None]
    if not pairs:
        return None
    metrics = [m for m in PAPER_METRICS if any(r["metric"] == m for r in pairs)]
    models = model_order(r["model"] for r in pairs)
    colors = model_colors(models)
    ncols = min(3, len(metrics) + 1)  # the last slot holds the legend
    nrows = math.ceil((len(metrics) + 1) / ncols)
    fig = _figure(3.3 * ncols, 3.3 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        sel = [r for r in pairs if r["metric"] == metric]
        xs = np.array([r["paper"] for r in sel])
        ys = np.array([r["cbmir"] for r in sel])
        lo, hi = float(min(xs.min(), ys.min())) - 2, float(max(xs.max(), ys.max())) + 2
        ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=1, zorder=1)
        ax.fill_between([lo, hi], [lo - 3, hi - 3], [lo + 3, hi + 3], color="0.85", zorder=0, label="±3 points")
        for m in models:
            sm = [r for r in sel if r["model"] == m]
            if sm:
                ax.scatter(
                    [r["paper"] for r in sm],
                    [r["cbmir"] for r in sm],
                    s=16,
                    color=colors[m],
                    label=model_label(m),
                    zorder=2,
                    edgecolors="none",
                )
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        mad = float(np.mean(np.abs(ys.round(2) - xs)))
        ax.set_title(f"{metric}: mean |Δ| {mad:.2f} (n={len(sel)})", fontsize=9)
        ax.set_xlabel("paper (%)", fontsize=8)
        ax.set_ylabel("cbmir (%)", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    _legend(
        axes[len(metrics)],
        axes[: len(metrics)],
        [model_label(m) for m in models] + ["±3 points"],
        loc="center",
        frameon=False,
    )
    fig.suptitle("cbmir (y) vs the paper (x), protocol paper; diagonal = exact reproduction")
    return _save(fig, path)


def _legend(target, axes: Iterable, order: Sequence[str], **kwargs: Any) -> None:
    """One legend (on a figure or a spare panel) for all panels, in model order, whichever panel drew each model."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    labels = [label for label in order if label in handles]
    target.legend(
        [handles[label] for label in labels], labels, **{"loc": "outside right center", "fontsize": 8, **kwargs}
    )


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
