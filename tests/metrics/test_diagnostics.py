"""Hubness and the leakage audit on synthetic data; per_query.npz and the new result keys from a real cell."""

import json

import numpy as np
import pytest
from scipy import stats as sps

from cbmir.cell.run import run_cell
from cbmir.errors import ConfigError
from cbmir.layout import cell_dir
from cbmir.metrics.diagnostics import hubness, k_occurrence, leakage_audit, near_duplicates
from cbmir.metrics.per_query import read_per_query, recompute_per_query
from cbmir.metrics.retrieval import class_membership, summarize
from cbmir.search.exact import search_torch


def test_hubness_counts_and_skew():
    neighbors = np.array([[0, 1], [0, 2], [0, 1], [0, 3]])
    counts = k_occurrence(neighbors, 6)
    np.testing.assert_array_equal(counts, [4, 2, 1, 1, 0, 0])
    h = hubness(neighbors, 6, top=2)
    assert h["top_hubs"] == [0, 1] and h["top_hub_occurrences"] == [4, 2]
    assert h["skewness"] == pytest.approx(sps.skew(counts)) and h["skewness"] > 0
    assert h["never_retrieved"] == 2 and h["k"] == 2


def test_leakage_audit_finds_exact_copies():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(200, 16)).astype(np.float32)
    q = rng.normal(size=(30, 16)).astype(np.float32)
    leaked = [3, 7, 21]
    q[leaked] = db[[10, 50, 199]]  # exact copies of database items
    q[5] = db[60] * (1 + 1e-7)  # a numerically equal embedding of another image (not pixel-identical)
    db_images = rng.integers(0, 255, size=(200, 4, 4), dtype=np.uint8)
    q_images = rng.integers(0, 255, size=(30, 4, 4), dtype=np.uint8)
    q_images[leaked] = db_images[[10, 50, 199]]
    _, neighbors = search_torch(db, q, 3, "l2")
    scores = {"ACC@1": np.where(np.isin(np.arange(30), [3, 5, 7, 21]), 1.0, 0.5)}
    audit = leakage_audit(db, q, neighbors, scores, images={"query": q_images, "database": db_images})
    assert audit["n_near_duplicates"] == 4 and audit["near_duplicate_queries"] == [3, 5, 7, 21]
    assert audit["n_pixel_identical"] == 3
    assert audit["metrics_without_near_duplicates"] == {"ACC@1": pytest.approx(50.0)}
    assert not near_duplicates(db, q, neighbors[:, 0], 0.0)[5]  # zero tolerance: only bit-equal vectors


def test_per_query_file_and_statistics_from_a_real_cell(cell_cfg, data_dir):
    cfg = cell_cfg("dataset=bloodmnist", "protocol=standard", "stats.resamples=500")
    result = run_cell(cfg)
    out = cell_dir(cfg)
    scores, index, labels = read_per_query(out)
    np.testing.assert_array_equal(index, np.arange(12))
    assert labels.shape == (12, 1) and labels.dtype == np.int64
    assert {"mAP@5", "ACC@1", "P@5", "nDCG@5", "MRR@5", "MAP@R", "R-precision"} <= set(scores)
    for name, values in scores.items():  # the headline is the mean of the stored per-query scores
        assert values.shape == (12,) and result["metrics"][name] == pytest.approx(values.mean())
    membership, names = class_membership(labels)
    assert summarize({n: v / 100 for n, v in scores.items()}, membership) == pytest.approx(result["metrics"])
    for name, ci in result["intervals"].items():
        assert ci["low"] <= result["metrics"][name] <= ci["high"]
        assert (ci["level"], ci["method"], ci["resamples"], ci["seed"]) == (0.95, "percentile", 500, 0)
    assert set(result["intervals"]) == set(result["metrics"])
    assert set(result["per_class"]["ACC@1"]) == set(names)
    assert result["diagnostics"]["hubness"]["k"] == 5
    assert result["diagnostics"]["leakage"]["n_near_duplicates"] == 0
    assert result["diagnostics"]["leakage"]["n_pixel_identical"] == 0
    assert json.loads((out / "result.json").read_text())["intervals"] == result["intervals"]
    # old results: the same scores rebuilt from neighbors.npy, result.json and the labels
    from cbmir import data

    q_labels = data.open_split(cfg.dataset, 28, data_dir, "test").labels
    db_labels = data.open_split(cfg.dataset, 28, data_dir, "train").labels
    again = recompute_per_query(out, q_labels, db_labels)
    assert set(again) == set(scores)
    for name in scores:
        np.testing.assert_allclose(again[name], scores[name], rtol=1e-12)


def test_paper_cell_keeps_its_five_metrics_and_gets_intervals(cell_cfg):
    result = run_cell(cell_cfg("dataset=chestmnist", "stats.resamples=200", "stats.method=bca"))
    assert set(result["metrics"]) == {"mAP@5", "mMV@5", "ACC@1", "ACC@3", "ACC@5"}
    assert set(result["intervals"]) == set(result["metrics"])
    assert all(ci["method"] == "bca" for ci in result["intervals"].values())
    scores, _, labels = read_per_query(cell_dir(cell_cfg("dataset=chestmnist")))
    assert labels.shape[1] == 14 and set(scores) == set(result["metrics"])


def test_bad_stats_config_fails_before_any_work(cell_cfg, monkeypatch):
    monkeypatch.setattr("cbmir.models.build_backbone", lambda *a, **k: pytest.fail("must not build"))
    with pytest.raises(ConfigError, match="stats.level"):
        run_cell(cell_cfg("stats.level=2.0"))
    with pytest.raises(ConfigError, match="stats.method"):
        run_cell(cell_cfg("stats.method=studentized"))
