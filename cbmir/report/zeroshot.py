"""``zeroshot_vs_knn.md|.csv``: does a sentence find the right class as often as an example image?

For every (dataset, size, model) with a ``zeroshot`` cell and an image-retrieval cell (``standard``, else ``paper``)
scored on the same query images: each one's ACC@1 (zero-shot: the top class prompt is the image's class; kNN: the
nearest database image shares its label), the paired difference zero-shot − kNN in percentage points with its
paired-bootstrap interval and the paired test's p-value (:func:`cbmir.stats.paired.compare_models`), corrected over
the table's rows (``stats.correction``). docs/text.md explains both protocols.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbmir.report.cells import Cell
from cbmir.report.queries import load_query_scores
from cbmir.report.significance import describe_test
from cbmir.report.tables import write_csv
from cbmir.stats.bootstrap import StatsSettings
from cbmir.stats.paired import adjust_pvalues, compare_models

#: The image protocols a zero-shot cell is compared with, in order of preference.
KNN_PROTOCOLS = ("standard", "paper")
METRIC = "ACC@1"
COLUMNS = (
    "dataset",
    "size",
    "model",
    "knn_protocol",
    "n_queries",
    "zeroshot",
    "knn",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "significant",
)


def zeroshot_rows(cells: Sequence[Cell], settings: StatsSettings) -> list[dict[str, Any]]:
    """One row per zero-shot cell that has an image-retrieval partner on the same query images."""
    by_key = {c.key: c for c in cells}
    rows = []
    for cell in cells:
        if cell.protocol != "zeroshot":
            continue
        partner = next(
            (by_key[k] for p in KNN_PROTOCOLS if (k := (p, cell.dataset, cell.size, cell.model)) in by_key), None
        )
        if partner is None:
            continue
        zs, knn = load_query_scores(cell), load_query_scores(partner)
        if zs is None or knn is None or not zs.same_queries(knn) or METRIC not in zs.scores or METRIC not in knn.scores:
            continue
        # compare_models takes scores in [0, 1] and answers in percentage points
        scores = {"zeroshot": {METRIC: zs.scores[METRIC] / 100}, "knn": {METRIC: knn.scores[METRIC] / 100}}
        c = compare_models(scores, [("zeroshot", "knn")], settings).comparisons[0]
        rows.append(
            {
                "dataset": cell.dataset,
                "size": cell.size,
                "model": cell.model,
                "knn_protocol": partner.protocol,
                "n_queries": int(len(zs.labels)),
                "zeroshot": float(zs.scores[METRIC].mean()),
                "knn": float(knn.scores[METRIC].mean()),
                "difference": c.difference,
                "ci_low": c.low,
                "ci_high": c.high,
                "p_value": c.p_value,
            }
        )
    adjusted = adjust_pvalues([r["p_value"] for r in rows], settings.correction) if rows else []
    alpha = 1 - settings.level
    for row, p in zip(rows, adjusted):
        row["p_adjusted"], row["significant"] = float(p), bool(p < alpha)
    return rows


def zeroshot_markdown(rows: Sequence[dict[str, Any]], settings: StatsSettings) -> str:
    lines = [
        "# Zero-shot (a sentence) vs image kNN (an example image): ACC@1 on the same query images",
        "",
        f"Difference zero-shot − kNN in percentage points, its {100 * settings.level:.0f}% paired-bootstrap interval "
        f"and p-value ({describe_test(settings)} over the rows); * = significant.",
        "",
        "| dataset | size | model | kNN protocol | queries | zero-shot ACC@1 | kNN ACC@1 | difference | interval | p |",
        "|---|:-:|---|---|:-:|:-:|:-:|:-:|:-:|:-:|",
    ]
    for r in rows:
        mark = "*" if r["significant"] else ""
        lines.append(
            f"| {r['dataset']} | {r['size']} | {r['model']} | {r['knn_protocol']} | {r['n_queries']} | "
            f"{r['zeroshot']:.2f} | {r['knn']:.2f} | {r['difference']:+.2f}{mark} | "
            f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['p_adjusted']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def write_zeroshot(cells: Sequence[Cell], out: Path, settings: StatsSettings) -> list[Path]:
    """``zeroshot_vs_knn.csv`` and ``.md`` at ``out`` (nothing when no zero-shot cell has a partner)."""
    rows = zeroshot_rows(cells, settings)
    if not rows:
        return []
    md = Path(out) / "zeroshot_vs_knn.md"
    md.write_text(zeroshot_markdown(rows, settings))
    return [write_csv(Path(out) / "zeroshot_vs_knn.csv", COLUMNS, rows), md]
