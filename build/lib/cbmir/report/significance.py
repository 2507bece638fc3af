"""Intervals and paired comparisons of one protocol's cells, column by column, from their per-query scores.

A column is one (dataset, size): its models were scored on the same queries, so
:func:`cbmir.stats.paired.compare_models` gives every model's bootstrap interval and every pair's paired
difference (interval, sign-flip p-value, Holm-corrected over the pairs of that column and metric)
in one pass. The intervals equal the cells' own ``result.json`` intervals for the same settings.

The metric tables mark, per column, every model *not significantly worse than the column's best*:
the best-vs-other comparisons of a whole table (all its datasets and sizes) form one family,
corrected with ``stats.correction`` (Holm by default), see :func:`not_worse_than_best`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cbmir.layout import CONF_DIR
from cbmir.metrics.retrieval import class_membership
from cbmir.report.cells import Cell
from cbmir.report.naming import is_finite, model_order
from cbmir.report.queries import QueryScores, load_query_scores
from cbmir.stats.bootstrap import StatsSettings
from cbmir.stats.paired import ColumnStatistics, Comparison, adjust_pvalues, compare_models

log = logging.getLogger(__name__)

#: (dataset, size, model): one cell of a protocol.
CellKey = tuple[str, int, str]


@dataclass
class Significance:
    """Every cell's intervals and every column's paired comparisons (percent, percentage points)."""

    settings: StatsSettings
    intervals: dict[CellKey, dict[str, tuple[float, float]]] = field(default_factory=dict)
    comparisons: dict[tuple[str, int], list[Comparison]] = field(default_factory=dict)
    #: where each cell's per-query scores came from (``per_query.npz``, ``neighbors.npy``) or ``result.json``
    sources: dict[CellKey, str] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        return 1.0 - self.settings.level

    def interval(self, cell: Cell, metric: str) -> tuple[float, float] | None:
        found = self.intervals.get((cell.dataset, cell.size, cell.model), {}).get(metric)
        return found if found is not None and all(is_finite(v) for v in found) else None


def describe_test(settings: StatsSettings) -> str:
    """``paired sign-flip permutation test, Holm correction``: the words of the tables' legends."""
    test = "sign-flip permutation" if settings.test == "signflip" else "Wilcoxon signed-rank"
    correction = {"holm": "Holm", "bh": "Benjamini–Hochberg", "none": "no"}[settings.correction]
    return f"paired {test} test on the same queries, {correction} correction"


def report_settings(resamples: int | None = None) -> StatsSettings:
    """``conf/stats/default.yaml`` (what the cells used), with ``resamples`` overridden if given."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "stats" / "default.yaml"))
    if resamples is not None:
        node["resamples"] = resamples
    return StatsSettings.from_config(node)


def column_statistics(cells: Sequence[Cell], settings: StatsSettings) -> Significance:
    """Intervals and all-pairs comparisons per (dataset, size) of one protocol's cells."""
    out = Significance(settings)
    columns: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        columns.setdefault((c.dataset, c.size), []).append(c)
    for (dataset, size), column in columns.items():
        by_model = {c.model: c for c in column}
        loaded = {m: load_query_scores(by_model[m]) for m in model_order(by_model)}
        scored = {m: q for m, q in loaded.items() if q is not None}
        groups = _query_groups(scored)
        if len(groups) > 1:
            log.warning(
                "%s/%s: models scored on different queries (%s); only models on the same queries are compared",
                dataset,
                size,
                " | ".join(", ".join(g) for g in groups),
            )
        for i, group in enumerate(groups):
            stats = _compare(group, scored, [by_model[m] for m in group], settings)
            if stats is None:
                continue
            for m in group:
                out.intervals[(dataset, size, m)] = {k: (v["low"], v["high"]) for k, v in stats.intervals[m].items()}
                out.sources[(dataset, size, m)] = scored[m].source
            if i == 0:
                out.comparisons[(dataset, size)] = stats.comparisons
        for m, c in by_model.items():  # stored intervals where the per-query scores lack a metric or are gone
            own = out.intervals.setdefault((dataset, size, m), {})
            for metric, bounds in c.intervals.items():
                own.setdefault(metric, bounds)
            out.sources.setdefault((dataset, size, m), "result.json" if c.intervals else "none")
    return out


def _query_groups(scored: dict[str, QueryScores]) -> list[list[str]]:
    """Models split by the queries they were scored on, the largest group first (then model order)."""
    groups: list[list[str]] = []
    for m, q in scored.items():
        home = next((g for g in groups if scored[g[0]].same_queries(q)), None)
        if home is None:
            groups.append([m])
        else:
            home.append(m)
    return sorted(groups, key=len, reverse=True)


def _compare(
    models: list[str], scored: dict[str, QueryScores], cells: list[Cell], settings: StatsSettings
) -> ColumnStatistics | None:
    """compare_models over the metrics all ``models`` have per query; ``_macro`` too where the cells report it."""
    metrics = [n for n in scored[models[0]].scores if all(n in scored[m].scores for m in models)]
    if not metrics:
        return None
    macro = any(f"{n}_macro" in c.metrics for n in metrics for c in cells)
    membership = class_membership(scored[models[0]].labels)[0] if macro else None
    scores = {m: {n: scored[m].scores[n] / 100.0 for n in metrics} for m in models}
    pairs = list(itertools.combinations(models, 2))
    return compare_models(scores, pairs, settings, membership)


def not_worse_than_best(
    cells: Sequence[Cell], metric: str, significance: Significance
) -> tuple[set[CellKey], set[CellKey]]:
    """``(best, not significantly worse)`` cells of one metric's table (higher is better).

    Per column the best is the highest value; each other model with per-query scores is tested
    against it (the column's paired comparison), and the raw p-values of all those tests in the
    table are corrected together (``stats.correction``). A model is marked when its corrected
    p-value is at least α = 1 − ``stats.level``: the data cannot tell it from the best.
    """
    columns: dict[tuple[str, int], dict[str, float]] = {}
    for c in cells:
        if is_finite(c.metrics.get(metric)):
            columns.setdefault((c.dataset, c.size), {})[c.model] = c.metrics[metric]
    best: set[CellKey] = set()
    tests: list[tuple[CellKey, float]] = []
    for (dataset, size), values in columns.items():
        top = max(model_order(values), key=lambda m: values[m])  # ties: the first in model order
        best.add((dataset, size, top))
        for comp in significance.comparisons.get((dataset, size), []):
            if comp.metric == metric and top in (comp.a, comp.b):
                other = comp.b if comp.a == top else comp.a
                if other in values:
                    tests.append(((dataset, size, other), comp.p_value))
    if not tests:
        return best, set()
    adjusted = adjust_pvalues([p for _, p in tests], significance.settings.correction)
    marked = {key for (key, _), p in zip(tests, adjusted, strict=True) if np.isfinite(p) and p >= significance.alpha}
    return best, marked
