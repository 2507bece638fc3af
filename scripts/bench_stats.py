"""Time the statistics of a whole study from stored per-query files (docs/statistics.md quotes the figures).

    python scripts/bench_stats.py [--resamples 10000] [--standard]

Writes synthetic per_query.npz files for the paper's grid (9 models × 28 dataset-size
columns, the real MedMNIST query counts), then times what a report does: read every file,
per column the intervals of every model and metric plus each model against the column's
best (paired bootstrap + sign-flip test, Holm), and per metric Friedman + Nemenyi over the
28 columns with a CD diagram PNG; prints wall and CPU (all threads) seconds. ``--standard``
uses the standard protocol's 12 metrics and their macro averages. Also times
scipy.stats.bootstrap on one PathMNIST-sized cell.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cbmir.metrics.per_query import read_per_query, write_per_query
from cbmir.metrics.retrieval import class_membership
from cbmir.stats.bootstrap import StatsSettings
from cbmir.stats.paired import compare_models
from cbmir.stats.ranks import draw_cd_diagram, rank_models

#: (dataset, test-split queries, classes) of the paper grid; 2D at 4 sizes, 3D at 2
DATASETS = [
    ("breastmnist", 156, 2, 4),
    ("pneumoniamnist", 624, 2, 4),
    ("retinamnist", 400, 5, 4),
    ("dermamnist", 2005, 7, 4),
    ("bloodmnist", 3421, 8, 4),
    ("pathmnist", 7180, 9, 4),
    ("adrenalmnist3d", 298, 2, 2),
    ("synapsemnist3d", 352, 2, 2),
]
MODELS = 9
PAPER = ["mAP@5", "mMV@5", "ACC@1", "ACC@3", "ACC@5"]
STANDARD = PAPER + ["AP@5_textbook", "P@5", "R@5", "nDCG@5", "MRR@5", "MAP@R", "R-precision"]


def write_study(root: Path, metrics: list[str]) -> list[Path]:
    rng = np.random.default_rng(0)
    columns = []
    for name, n, classes, sizes in DATASETS:
        for size in [28, 64, 128, 224][:sizes]:
            labels = rng.integers(0, classes, n)
            column = root / name / str(size)
            for m in range(MODELS):
                skill = 0.5 + 0.04 * m
                scores = {}
                for metric in metrics:
                    p = np.clip(skill + rng.normal(0, 0.2, n), 0, 1)
                    discrete = metric.startswith(("ACC", "mMV"))
                    scores[metric] = (rng.random(n) < p).astype(float) if discrete else p
                (column / f"model{m}").mkdir(parents=True, exist_ok=True)
                write_per_query(column / f"model{m}", scores, labels)
            columns.append(column)
    return columns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--standard", action="store_true")
    args = parser.parse_args()
    metrics = STANDARD if args.standard else PAPER
    settings = StatsSettings(resamples=args.resamples)
    with tempfile.TemporaryDirectory() as tmp:
        columns = write_study(Path(tmp), metrics)
        t0, c0 = time.perf_counter(), time.process_time()
        table = {metric: [] for metric in metrics}
        n_intervals = n_comparisons = 0
        for column in columns:
            scores, labels = {}, None
            for m in range(MODELS):
                scores[f"model{m}"], _, labels = read_per_query(column / f"model{m}")
            scores = {m: {k: v / 100 for k, v in s.items()} for m, s in scores.items()}
            best = max(scores, key=lambda m: scores[m][metrics[0]].mean())
            pairs = [(best, m) for m in scores if m != best]
            membership = class_membership(labels)[0] if args.standard else None
            result = compare_models(scores, pairs, settings, membership)
            n_intervals += sum(len(v) for v in result.intervals.values())
            n_comparisons += len(result.comparisons)
            for metric in metrics:
                table[metric].append([scores[m][metric].mean() for m in scores])
        t_columns, c_columns = time.perf_counter() - t0, time.process_time() - c0
        for metric in metrics:
            analysis = rank_models(np.array(table[metric]), [f"model{m}" for m in range(MODELS)])
            draw_cd_diagram(analysis, Path(tmp) / "cd" / f"{metric}.png", title=metric)
        total, c_total = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{len(columns) * MODELS} cells, {len(metrics)} metrics{' + macro' if args.standard else ''}, "
        f"{args.resamples} resamples: {n_intervals} intervals and {n_comparisons} paired comparisons in "
        f"{t_columns:.1f} s ({c_columns:.1f} s CPU); with Friedman/Nemenyi and {len(metrics)} CD diagrams "
        f"{total:.1f} s ({c_total:.1f} s CPU)"
    )
    from scipy import stats as sps

    x = np.random.default_rng(1).random(7180)
    t0 = time.perf_counter()
    sps.bootstrap((x,), np.mean, n_resamples=args.resamples, vectorized=True, method="percentile", random_state=0)
    t_scipy = time.perf_counter() - t0
    t0 = time.perf_counter()
    compare_models({"a": {"m": x}}, [], settings)
    t_ours = time.perf_counter() - t0
    print(f"one 7180-query interval: scipy.stats.bootstrap {t_scipy:.2f} s, cbmir.stats.bootstrap {t_ours:.2f} s")


if __name__ == "__main__":
    main()
