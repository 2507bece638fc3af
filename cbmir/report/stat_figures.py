"""Figures of the statistics: forest plots (each model's value with its interval) and critical-difference diagrams.

* ``forest_<metric>.png``: a panel per (dataset, size), a row per model: the value and its bootstrap
  interval; filled = best or not significantly worse than it (the tables' bold and ≈), hollow = worse.
* ``cd_<metric>_<size>.png``: the models' average ranks over the datasets at one size, Friedman's test
  and Nemenyi's critical difference (:mod:`cbmir.stats.ranks`, Demšar 2006); bars join models the test
  cannot separate. Drawn where at least 3 models have a value on at least 2 datasets at that size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cbmir.report.cells import Cell
from cbmir.report.figures import _figure, _save, metric_slug, model_colors
from cbmir.report.naming import dataset_label, dataset_order, metric_order, model_label, model_order
from cbmir.report.significance import Significance, not_worse_than_best
from cbmir.report.tables import value_grid

log = logging.getLogger(__name__)


def write_stat_figures(cells: Sequence[Cell], significance: Significance | None, folder: Path) -> list[Path]:
    """CD diagrams of every metric and size; with ``significance``, a forest plot per metric."""
    files: list[Path | None] = []
    for metric in metric_order(m for c in cells for m in c.metrics):
        if significance is not None:
            files.append(forest_figure(cells, metric, significance, folder / f"forest_{metric_slug(metric)}.png"))
        for size in sorted({c.size for c in cells}):
            files.append(cd_figure(cells, metric, size, folder / f"cd_{metric_slug(metric)}_{size}.png"))
    return [f for f in files if f]


def forest_figure(cells: Sequence[Cell], metric: str, significance: Significance, path: Path) -> Path | None:
    """Value and interval of every model, a panel per (dataset, size); None when no cell has an interval."""
    grid = value_grid(cells, lambda c: c.metrics.get(metric))
    by_key = {(c.dataset, c.size, c.model): c for c in cells}
    intervals = {k: significance.interval(by_key[k], metric) for k in grid}
    if not any(intervals.values()):
        return None
    best, marked = not_worse_than_best(cells, metric, significance)
    models = model_order(m for _, _, m in grid)
    datasets = dataset_order(d for d, _, _ in grid)
    columns = [(d, s) for d in datasets for s in sorted({s for dd, s, _ in grid if dd == d})]
    colors = model_colors(models)
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = _figure(3.0 * ncols + 1.2, nrows * (0.6 + 0.28 * len(models)) + 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (d, s) in zip(axes, columns, strict=False):
        for row, m in enumerate(models):
            if (d, s, m) not in grid:
                continue
            value, ci = grid[(d, s, m)], intervals[(d, s, m)]
            if ci is not None:
                ax.plot(ci, [row, row], color=colors[m], linewidth=1.5)
            filled = (d, s, m) in best or (d, s, m) in marked
            ax.plot(
                [value],
                [row],
                marker="o",
                markersize=5,
                color=colors[m],
                markerfacecolor=colors[m] if filled else "white",
            )
        ax.set_yticks(range(len(models)), [model_label(m) for m in models], fontsize=7)
        ax.set_ylim(len(models) - 0.5, -0.5)
        ax.set_title(f"{dataset_label(d)}, {s} px", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(columns) :]:
        ax.set_visible(False)
    level = f"{100 * significance.settings.level:g}%"
    fig.suptitle(
        f"{metric} (%) with {level} bootstrap intervals; filled = best or not significantly worse", fontsize=10
    )
    return _save(fig, path)


def cd_figure(cells: Sequence[Cell], metric: str, size: int, path: Path) -> Path | None:
    """Critical-difference diagram of one metric at one size, datasets as blocks; None where too few."""
    from cbmir.stats.ranks import draw_cd_diagram, rank_models

    grid = {(d, m): v for (d, s, m), v in value_grid(cells, lambda c: c.metrics.get(metric)).items() if s == size}
    datasets = dataset_order(d for d, _ in grid)
    models = [m for m in model_order(m for _, m in grid) if all((d, m) in grid for d in datasets)]
    if len(models) < 3 or len(datasets) < 2:
        log.debug(
            "no CD diagram for %s at %s px: %d models on all %d datasets", metric, size, len(models), len(datasets)
        )
        return None
    table = np.array([[grid[(d, m)] for m in models] for d in datasets])
    if np.all(table == table[:, :1]):
        return None  # every block a full tie: no ranking to draw
    analysis = rank_models(table, [model_label(m) for m in models])
    title = f"{metric}, {size} px: {len(datasets)} datasets ({', '.join(dataset_label(d) for d in datasets)})"
    colors = {model_label(m): color for m, color in model_colors(models).items()}  # the forest plots' colours
    return draw_cd_diagram(analysis, path, title=title, colors=colors)
