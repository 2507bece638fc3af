"""The zero-shot vs image-kNN table: ACC@1 of both on the same query images, the paired difference and its test."""

from __future__ import annotations

import numpy as np

from cbmir.metrics.per_query import write_per_query
from cbmir.report.cells import Cell
from cbmir.report.zeroshot import write_zeroshot, zeroshot_rows
from cbmir.stats.bootstrap import StatsSettings


def cell(tmp_path, protocol: str, acc1: np.ndarray, labels: np.ndarray, model: str = "conch") -> Cell:
    folder = tmp_path / protocol / model
    folder.mkdir(parents=True)
    write_per_query(folder, {"ACC@1": acc1}, labels)
    return Cell(protocol, "pathmnist", 224, model, {"ACC@1": 100 * float(acc1.mean())}, path=folder)


def test_zeroshot_rows_pair_the_same_queries(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, size=(200, 1))
    zs = (rng.random(200) < 0.6).astype(float)
    knn = (rng.random(200) < 0.9).astype(float)
    cells = [
        cell(tmp_path, "zeroshot", zs, labels),
        cell(tmp_path, "standard", knn, labels),
        cell(tmp_path, "zeroshot", zs, labels, model="openclip"),  # no image-retrieval partner: no row
        cell(tmp_path, "paper", knn[:100], labels[:100], model="openclip"),  # other queries: no row either
    ]
    settings = StatsSettings(resamples=2000)
    rows = zeroshot_rows(cells, settings)
    assert len(rows) == 1
    r = rows[0]
    assert (r["model"], r["knn_protocol"], r["n_queries"]) == ("conch", "standard", 200)
    assert abs(r["zeroshot"] - 100 * zs.mean()) < 1e-9 and abs(r["knn"] - 100 * knn.mean()) < 1e-9
    assert abs(r["difference"] - 100 * (zs.mean() - knn.mean())) < 1e-9
    assert r["ci_low"] < r["difference"] < r["ci_high"] < 0 and r["significant"] and r["p_adjusted"] < 0.05
    files = write_zeroshot(cells, tmp_path, settings)
    assert [f.name for f in files] == ["zeroshot_vs_knn.csv", "zeroshot_vs_knn.md"]
    assert "| pathmnist | 224 | conch | standard | 200 |" in files[1].read_text()
