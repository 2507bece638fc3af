"""``results.csv`` (one row per cell, every number) and ``tables.md`` (per metric, the paper's table shape)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.layout import SIZES_3D
from cbmir.report.cells import Cell
from cbmir.report.naming import (
    MISSING,
    SAME_AS_BEST,
    dataset_label,
    dataset_order,
    fmt,
    is_3d,
    is_finite,
    metric_order,
    model_label,
    model_order,
)
from cbmir.report.significance import Significance, describe_test, not_worse_than_best
from cbmir.safety.files import atomic_write_text

#: (dataset, size, model) -> a value: the shape every table and figure is drawn from.
Grid = dict[tuple[str, int, str], float]

_LEADING = ("protocol", "dataset", "size", "model", "k", "metric", "n_queries", "n_database", "embedding_dim")


# --------------------------------------------------------------------------- results.csv


def result_columns(cells: Sequence[Cell], intervals: bool = False) -> list[str]:
    """Identity, metrics (paper order; with ``intervals`` each followed by ``_ci_low``, ``_ci_high``), timings,
    the rest alphabetically, versions last."""
    metrics = metric_order(m for c in cells for m in c.metrics)
    if intervals:
        metrics = [name for m in metrics for name in (m, f"{m}_ci_low", f"{m}_ci_high")]
    info = {k for c in cells for k in c.info} - set(_LEADING)
    seconds = sorted(k for k in info if k.startswith("seconds_"))
    versions = sorted(k for k in info if k.startswith("version_"))
    rest = sorted(info - set(seconds) - set(versions))
    return [*_LEADING, *metrics, *seconds, *rest, *versions, "path"]


def result_rows(cells: Sequence[Cell], significance: Significance | None = None) -> list[dict[str, Any]]:
    """One dict per cell; ``<metric>_ci_low/_ci_high`` (percent) where ``significance`` has the interval."""
    rows = []
    for c in cells:
        bounds: dict[str, float] = {}
        for m in c.metrics if significance is not None else ():
            if (ci := significance.interval(c, m)) is not None:
                bounds |= {f"{m}_ci_low": ci[0], f"{m}_ci_high": ci[1]}
        identity = {"protocol": c.protocol, "dataset": c.dataset, "size": c.size, "model": c.model}
        rows.append({**c.info, **c.metrics, **bounds, **identity, "path": str(c.path) if c.path else ""})
    return rows


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Floats keep full precision (Python's repr); missing values are empty fields. Written atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    return path


# --------------------------------------------------------------------------- tables


def value_grid(cells: Sequence[Cell], value_of: Callable[[Cell], float | None]) -> Grid:
    """The finite values of ``value_of`` by (dataset, size, model); a cell without one is absent."""
    out = {}
    for c in cells:
        v = value_of(c)
        if is_finite(v):
            out[(c.dataset, c.size, c.model)] = float(v)
    return out


def _average_ranks(values: dict[str, float], higher_is_better: bool) -> dict[str, float]:
    """Rank 1 = best; ties share the mean of their ranks."""
    ordered = sorted(values, key=lambda m: -values[m] if higher_is_better else values[m])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and values[ordered[j + 1]] == values[ordered[i]]:
            j += 1
        for m in ordered[i : j + 1]:
            ranks[m] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@dataclass
class Table:
    """A paper-shaped table, kept as strings so tests and the Markdown writer read the same thing."""

    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join(["---"] + [":-:"] * (len(self.header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + self.notes if self.notes else []))

    def row(self, first: str) -> list[str]:
        """The row whose first column is ``first`` (a model's label)."""
        return next(r for r in self.rows if r[0] == first)

    def column(self, name: str) -> int:
        return self.header.index(name)


def value_table(
    cells: Sequence[Cell],
    value_of: Callable[[Cell], float | None],
    *,
    higher_is_better: bool = True,
    digits: int = 2,
    ranks: bool = True,
    means: bool = True,
    interval_of: Callable[[Cell], tuple[float, float] | None] | None = None,
    marked: set[tuple[str, int, str]] | None = None,
) -> Table:
    """Rows = models, columns = datasets, each cell its values across sizes (``83.18 / 85.45 / …``).

    The best value of each (dataset, size) is bold (ties at the shown precision all bold). With
    ``interval_of``, each value is followed by its interval's half-width (``83.18 ±1.05``, ``±–`` where
    the cell has none); a (dataset, size, model) in ``marked`` gets :data:`SAME_AS_BEST` after its value
    (``84.08≈``): not significantly worse than the column's best. The mean
    over 2D (3D) datasets at a size only counts the datasets that have that size in this table, and is
    left out for a model that misses one of them, so every mean in a column averages the same datasets.
    The average rank is over the (dataset, size) columns a model has, with their count beside it.
    """
    grid = value_grid(cells, value_of)
    models = model_order(m for _, _, m in grid)
    datasets = dataset_order(d for d, _, _ in grid)
    sizes = {d: sorted({s for dd, s, _ in grid if dd == d}) for d in datasets}
    better = max if higher_is_better else min

    def best_of(column: dict[str, float]) -> float | None:
        return better(round(v, digits) for v in column.values()) if column else None

    intervals = {(c.dataset, c.size, c.model): interval_of(c) for c in cells} if interval_of else None
    marked = marked or set()

    def render(
        model: str,
        size_list: list[int],
        value: Callable[[str, int], float | None],
        best: dict[int, float | None],
        dataset: str | None = None,
    ) -> str:
        values = [value(model, s) for s in size_list]
        if not any(is_finite(v) for v in values):
            return ""
        parts = []
        for s, v in zip(size_list, values, strict=True):
            text = fmt(v, digits)
            if is_finite(v) and best[s] is not None and round(v, digits) == best[s]:
                text = f"**{text}**"
            elif is_finite(v) and (dataset, s, model) in marked:
                text += SAME_AS_BEST
            if intervals is not None and dataset is not None and is_finite(v):
                text += f" ±{half_width(intervals.get((dataset, s, model)), digits)}"
            parts.append(text)
        return " / ".join(parts)

    header = ["Model"] + [dataset_label(d) for d in datasets]
    size_row = ["*size (px)*"] + [" / ".join(map(str, sizes[d])) for d in datasets]
    columns = {d: {s: {m: grid[(d, s, m)] for m in models if (d, s, m) in grid} for s in sizes[d]} for d in datasets}
    body = {
        m: [
            render(
                m, sizes[d], lambda mm, s, d=d: grid.get((d, s, mm)), {s: best_of(columns[d][s]) for s in sizes[d]}, d
            )
            for d in datasets
        ]
        for m in models
    }
    notes = []

    if means:
        for name, group in (("2D", [d for d in datasets if not is_3d(d)]), ("3D", [d for d in datasets if is_3d(d)])):
            if len(group) < 2:
                continue
            group_sizes = sorted({s for d in group for s in sizes[d]})
            mean: dict[tuple[str, int], float] = {}
            for s in group_sizes:
                members = [d for d in group if s in sizes[d]]
                for m in models:
                    vals = [grid.get((d, s, m)) for d in members]
                    if all(is_finite(v) for v in vals):
                        mean[(m, s)] = float(np.mean(vals))
            best = {s: best_of({m: mean[(m, s)] for m in models if (m, s) in mean}) for s in group_sizes}
            header.append(f"mean {name}")
            size_row.append(" / ".join(map(str, group_sizes)))
            for m in models:
                body[m].append(render(m, group_sizes, lambda mm, s, mean=mean: mean.get((mm, s)), best))
            notes.append(
                f"mean {name}: over {', '.join(dataset_label(d) for d in group)} "
                "(at each size, the datasets that have it); blank where a model misses one of them."
            )

    if ranks:
        total: dict[str, list[float]] = {m: [] for m in models}
        for d in datasets:
            for s in sizes[d]:
                for m, r in _average_ranks(columns[d][s], higher_is_better).items():
                    total[m].append(r)
        header.append("avg rank (cells)")
        size_row.append("")
        for m in models:
            body[m].append(f"{np.mean(total[m]):.2f} ({len(total[m])})" if total[m] else "")
        notes.append("avg rank: mean rank among the models present in each (dataset, size) column, 1 = best.")
    rows = [size_row] + [[model_label(m)] + body[m] for m in models]
    return Table(header, rows, notes)


def half_width(bounds: tuple[float, float] | None, digits: int = 2) -> str:
    """Half the interval's width at the tables' precision (the exact bounds are in results.csv)."""
    return fmt((bounds[1] - bounds[0]) / 2, digits) if bounds is not None else MISSING


def metric_table(cells: Sequence[Cell], metric: str, significance: Significance | None = None, **kwargs: Any) -> Table:
    """One metric's table; with ``significance``, values carry their intervals and the marks of the legend."""
    if significance is None:
        return value_table(cells, lambda c: c.metrics.get(metric), **kwargs)
    _, marked = not_worse_than_best(cells, metric, significance)
    table = value_table(
        cells,
        lambda c: c.metrics.get(metric),
        interval_of=lambda c: significance.interval(c, metric),
        marked=marked,
        **kwargs,
    )
    table.notes = [legend(significance)] + table.notes
    return table


def legend(significance: Significance) -> str:
    """The legend under a table with intervals and marks."""
    s = significance.settings
    return (
        f"±: half-width of the {100 * s.level:g}% {s.method} bootstrap interval over queries ({s.resamples} "
        f"resamples; exact bounds in results.csv; {MISSING} = no per-query scores). **bold** = best of its dataset "
        f"and size; {SAME_AS_BEST} = not significantly worse than that best ({describe_test(s)} over all "
        f"best-vs-other tests of this table, α = {significance.alpha:.2g}); "
        "no mark = significantly worse, or not testable (no per-query scores). The means carry no interval."
    )


def coverage(cells: Sequence[Cell]) -> tuple[int, list[tuple[str, int, str]]]:
    """The cells missing from the grid of the models, datasets and sizes seen (3D datasets: 28 and 64 only)."""
    models = model_order(c.model for c in cells)
    datasets = dataset_order(c.dataset for c in cells)
    seen_sizes = {c.size for c in cells}
    have = {(c.dataset, c.size, c.model) for c in cells}
    expected = [
        (d, s, m)
        for d in datasets
        for s in sorted(seen_sizes)
        if not is_3d(d) or s in SIZES_3D or any(c.dataset == d and c.size == s for c in cells)
        for m in models
    ]
    return len(expected), [e for e in expected if e not in have]


def tables_markdown(cells: Sequence[Cell], protocol: str, significance: Significance | None = None) -> str:
    """``tables.md`` of one protocol: coverage, one table per metric, then the time per cell.

    With ``significance`` every value carries its interval and marks (legend under each table);
    without, the paper's shape: values only.
    """
    cells = [c for c in cells if c.protocol == protocol]
    n_expected, missing = coverage(cells)
    out = [
        f"# Retrieval results, protocol `{protocol}`",
        "",
        f"{len(cells)} cells ({n_expected - len(missing)} of the {n_expected} "
        "model × dataset × size combinations seen). "
        "Each entry lists the values across sizes in the order of the *size* row (28 = MedMNIST's 28 px files, "
        "which the study's protocols upsample to 32 px); "
        f"**bold** = best of its dataset and size; {MISSING} = not run.",
        "",
    ]
    if missing:
        shown = ", ".join(f"{model_label(m)}/{dataset_label(d)}/{s}" for d, s, m in missing[:40])
        out += [f"Missing: {shown}{' …' if len(missing) > 40 else ''}", ""]
    for metric in metric_order(m for c in cells for m in c.metrics):
        out += [f"## {metric} (%)", "", metric_table(cells, metric, significance).markdown(), ""]
    if any(is_finite(c.info.get("seconds_total")) for c in cells):
        table = value_table(
            cells, lambda c: c.info.get("seconds_total"), higher_is_better=False, digits=1, ranks=False, means=False
        )
        out += ["## Time per cell (s, extraction + search; cached embeddings make it short)", "", table.markdown(), ""]
    return "\n".join(out)
