"""``pairwise.md|.csv``: every pair of models in every (dataset, size), their paired difference and its test.

Each row is one pair ``a - b`` (the pair in the report's model order) and one metric: the mean
per-query difference in percentage points, its paired-bootstrap interval, the raw p-value of the
paired test and the p-value corrected over the pairs of that column and metric (``stats.correction``,
Holm by default), as :func:`cbmir.stats.paired.compare_models` gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cbmir.report.naming import MISSING, dataset_label, dataset_order, metric_order, model_label
from cbmir.report.significance import Significance, describe_test

#: The columns of pairwise.csv (and the keys of a pairwise row).
PAIRWISE_COLUMNS: tuple[str, ...] = (
    "protocol",
    "dataset",
    "size",
    "metric",
    "a",
    "b",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "significant",
    "test",
    "correction",
    "level",
    "method",
    "resamples",
    "seed",
)
#: How many metrics pairwise.md shows per column (the first in report order, no ``_macro``); the CSV has all.
MARKDOWN_METRICS = 5


def pairwise_rows(protocol: str, significance: Significance) -> list[dict[str, Any]]:
    """One row per (dataset, size, metric, pair), datasets and metrics in report order."""
    rows = []
    columns = significance.comparisons
    datasets = dataset_order(d for d, _ in columns)
    for dataset, size in sorted(columns, key=lambda k: (datasets.index(k[0]), k[1])):
        comparisons = columns[(dataset, size)]
        order = {m: i for i, m in enumerate(metric_order(c.metric for c in comparisons))}
        for c in sorted(comparisons, key=lambda c: order[c.metric]):
            rows.append(
                {
                    "protocol": protocol,
                    "dataset": dataset,
                    "size": size,
                    "metric": c.metric,
                    "a": c.a,
                    "b": c.b,
                    "difference": c.difference,
                    "ci_low": c.low,
                    "ci_high": c.high,
                    "p_value": c.p_value,
                    "p_adjusted": c.p_adjusted,
                    "significant": bool(c.p_adjusted < significance.alpha),
                    "test": c.test,
                    "correction": c.correction,
                    "level": c.level,
                    "method": c.method,
                    "resamples": c.resamples,
                    "seed": c.seed,
                }
            )
    return rows


def fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def pairwise_entry(row: dict[str, Any]) -> str:
    """``**+5.20** [+3.10, +7.30] p<0.001``: the difference (bold when significant), its interval, corrected p."""
    diff = f"{row['difference']:+.2f}"
    diff = f"**{diff}**" if row["significant"] else diff
    return f"{diff} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] p={fmt_p(row['p_adjusted'])}"


def pairwise_markdown(protocol: str, rows: Sequence[dict[str, Any]], significance: Significance) -> str:
    """``pairwise.md``: per (dataset, size), a row per pair and a column per headline metric."""
    s = significance.settings
    out = [
        f"# Paired comparisons, protocol `{protocol}`",
        "",
        f"Each entry: a − b in percentage points, its {100 * s.level:g}% paired-bootstrap interval "
        f"({s.method}, {s.resamples} resamples) and the p-value of the {describe_test(s)} over the pairs of "
        f"its dataset, size and metric. **Bold** = significant at "
        f"α = {significance.alpha:.2g}. The first {MARKDOWN_METRICS} metrics (no `_macro`) are shown; "
        "`pairwise.csv` holds every metric, raw p-values included.",
        "",
    ]
    if not rows:
        return "\n".join(out + ["No column has two models with per-query scores."]) + "\n"
    by_column: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_column.setdefault((r["dataset"], r["size"]), []).append(r)
    for (dataset, size), column in by_column.items():
        metrics = [m for m in metric_order(r["metric"] for r in column) if not m.endswith("_macro")]
        metrics = metrics[:MARKDOWN_METRICS]
        cells = {(r["a"], r["b"], r["metric"]): r for r in column}
        pairs = list(dict.fromkeys((r["a"], r["b"]) for r in column))
        out += [
            f"## {dataset_label(dataset)}, {size} px",
            "",
            "| a − b | " + " | ".join(metrics) + " |",
            "|---" + "|:-:" * len(metrics) + "|",
        ]
        for a, b in pairs:
            entries = [pairwise_entry(cells[(a, b, m)]) if (a, b, m) in cells else MISSING for m in metrics]
            out.append(f"| {model_label(a)} − {model_label(b)} | " + " | ".join(entries) + " |")
        out.append("")
    return "\n".join(out)
