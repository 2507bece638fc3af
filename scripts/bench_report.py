"""Time the report (intervals, marks, pairwise tables, figures) over a whole study's stored files.

    python scripts/bench_report.py [--resamples 10000] [--standard] [--figures]

Writes synthetic result folders (result.json + per_query.npz) for the paper's grid: the study's
9 models × 28 dataset-size columns with the real MedMNIST query counts (docs/reports.md quotes
the figures), then times ``build_report`` with and without ``--no-ci``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_stats import DATASETS, PAPER, STANDARD

from cbmir.layout import paper_grid
from cbmir.metrics.per_query import write_per_query
from cbmir.metrics.retrieval import class_membership, summarize
from cbmir.report.build import build_report
from cbmir.report.collect import find_result_files, load_cells
from cbmir.report.significance import report_settings


def write_study(root: Path, metrics: list[str], standard: bool) -> None:
    rng = np.random.default_rng(0)
    protocol = "standard" if standard else "paper"
    for dataset, n, classes, sizes in DATASETS:
        for size in [28, 64, 128, 224][:sizes]:
            labels = rng.integers(0, classes, n)
            membership = class_membership(labels)[0] if standard else None
            for i, model in enumerate(paper_grid()["model"]):
                p = np.clip(0.5 + 0.04 * i + rng.normal(0, 0.2, n), 0, 1)
                scores = {m: (rng.random(n) < p).astype(float) if m.startswith(("ACC", "mMV")) else p for m in metrics}
                folder = root / "results" / protocol / dataset / str(size) / model
                folder.mkdir(parents=True)
                write_per_query(folder, scores, labels)
                result = {"protocol": protocol, "dataset": dataset, "size": size, "model": model, "k": 5}
                result["metrics"] = summarize(scores, membership)
                (folder / "result.json").write_text(json.dumps(result))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--resamples", type=int, default=None)
    parser.add_argument("--standard", action="store_true")
    parser.add_argument("--figures", action="store_true")
    args = parser.parse_args()
    settings = report_settings(args.resamples)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_study(root, STANDARD if args.standard else PAPER, args.standard)
        cells = load_cells(find_result_files([root]))
        for ci in (False, True):
            t0, c0 = time.perf_counter(), time.process_time()
            build_report(cells, root / f"report_{ci}", figures=args.figures, ci=ci, settings=settings)
            print(
                f"{len(cells)} cells, ci={ci}, figures={args.figures}, resamples={settings.resamples}: "
                f"{time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)"
            )


if __name__ == "__main__":
    main()
