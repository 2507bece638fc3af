"""Metrics of the text protocols on hand-built embeddings (exact values), and the database bootstrap's coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as sps
from scipy.optimize import brentq

from cbmir.metrics.text import _resampled, database_bootstrap, text_to_image_scores, zeroshot_scores
from cbmir.models.text import ensemble, prompt_texts
from cbmir.stats.bootstrap import StatsSettings

CLASSES = np.array([[1.0, 0, 0], [0, 1.0, 0]])
#: x0 (class 0) and x2 (class 0) bracket x1 (class 1) for the class-0 query; the class-1 query ranks x3, x1 first
DATABASE = np.array([[1.0, 0, 0], [0.8, 0.1, 0.59], [0.6, 0, 0.8], [0, 1.0, 0]])
DB_LABELS = np.array([[0], [1], [0], [1]])


def test_text_to_image_scores_per_class_query():
    scores, order = text_to_image_scores(CLASSES, DATABASE, DB_LABELS, k=2)
    np.testing.assert_array_equal(order, [[0, 1, 2, 3], [3, 1, 0, 2]])
    ndcg0 = 1 / (1 + 1 / math.log2(3))  # relevant at ranks 1 and 3 of 4; ideal: ranks 1 and 2
    expected = {
        "MAP@R": [0.5, 1.0],  # class 0: P@1 = 1 at the first of R = 2 ranks, a miss at the second
        "R-precision": [0.5, 1.0],
        "P@2": [0.5, 1.0],
        "nDCG@2": [ndcg0, 1.0],
        "mAP@2": [1.0, 1.0],  # the paper's hit-normalised AP over the first k
    }
    assert set(scores) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(scores[name], values, rtol=0, atol=1e-12, err_msg=name)


def test_multi_label_relevance_is_containing_the_class():
    labels = np.array([[1, 0], [1, 1], [1, 0], [0, 1]])  # x1 holds both classes: relevant to both queries
    scores, _ = text_to_image_scores(CLASSES, DATABASE, labels, k=2)
    # class 0: x0, x1, x2 relevant (R = 3), ranked first; class 1: x3 then x1 (R = 2)
    np.testing.assert_allclose(scores["MAP@R"], [1.0, 1.0])
    np.testing.assert_allclose(scores["P@2"], [1.0, 1.0])


def test_zeroshot_top_j_accuracy_per_image():
    classes = np.eye(3)
    images = np.array([[0.9, 0.3, 0.1], [0.5, 0.2, 0.6], [0.1, 0.7, 0.8]])
    scores, order = zeroshot_scores(images, classes, np.array([[0], [1], [1]]), ks=(1, 2, 5))
    np.testing.assert_array_equal(order, [[0, 1, 2], [2, 0, 1], [2, 1, 0]])
    assert set(scores) == {"ACC@1", "ACC@2"}  # 5 is not below the 3 classes
    np.testing.assert_array_equal(scores["ACC@1"], [1, 0, 0])
    np.testing.assert_array_equal(scores["ACC@2"], [1, 0, 1])
    multi, _ = zeroshot_scores(images, classes, np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]]), ks=(2,))
    np.testing.assert_array_equal(multi["ACC@1"], [1, 0, 0])  # an image with no label is never right
    np.testing.assert_array_equal(multi["ACC@2"], [1, 1, 0])


def test_prompt_ensemble_is_the_renormalised_mean():
    texts = prompt_texts(["a CLASSNAME.", "CLASSNAME, H&E."], [["fat", "adipose"], ["mucus"]])
    assert texts == [["a fat.", "fat, H&E.", "a adipose.", "adipose, H&E."], ["a mucus.", "mucus, H&E."]]
    e = ensemble(np.array([[1.0, 0], [0, 1.0]]))
    np.testing.assert_allclose(e, [2**-0.5, 2**-0.5], rtol=1e-6)


def test_resampled_ranking_counts_duplicates():
    rel = np.array([True, False, True, False])
    assert _resampled(rel, np.ones(4, dtype=np.int64), k=2) == (0.5, 0.5, 0.5)
    # x0 drawn twice, x2 never: the ranking is x0, x0, x1, x3 with R = 2
    assert _resampled(rel, np.array([2, 1, 0, 1]), k=2) == (1.0, 1.0, 1.0)
    assert _resampled(rel, np.array([0, 3, 0, 1]), k=2) == (0.0, 0.0, 0.0)  # nothing relevant drawn


def test_database_bootstrap_brackets_the_observed_value():
    scores, order = text_to_image_scores(CLASSES, DATABASE, DB_LABELS, k=2)
    out = database_bootstrap(order, np.array([[0], [1]]), DB_LABELS, 2, StatsSettings(resamples=200), 200)
    assert set(out) == {"MAP@R", "R-precision", "P@2"}
    for name, record in out.items():
        assert record["over"] == "database items" and record["resamples"] == 200
        assert record["low"] <= 100 * scores[name].mean() <= record["high"]


def population_r_precision(prior: float, shift: float) -> float:
    """R-precision of an infinite database: relevant scores N(shift, 1), others N(0, 1), a fraction ``prior``
    relevant. The first R ranks are the scores above t with P(score > t) = prior; R-precision = P(rel score > t)."""
    t = brentq(lambda t: prior * sps.norm.sf(t - shift) + (1 - prior) * sps.norm.sf(t) - prior, -10, 10)
    return float(sps.norm.sf(t - shift))


@pytest.mark.parametrize("n", [1000])
def test_database_bootstrap_coverage_is_nominal_on_simulated_rankings(n):
    """Over 160 simulated databases, the 95 % interval of R-precision holds the population value ~95 % of the time."""
    prior, shift, draws = 0.3, 1.5, 160
    truth = population_r_precision(prior, shift)
    rng = np.random.default_rng(20)
    hits = 0
    for i in range(draws):
        relevant = rng.random(n) < prior
        score = rng.normal(0, 1, n) + shift * relevant
        order = np.argsort(-score, kind="stable")[None, :]
        labels = np.where(relevant, 0, 1)[:, None]
        out = database_bootstrap(order, np.array([[0]]), labels, 5, StatsSettings(resamples=250, seed=i), 250)
        hits += out["R-precision"]["low"] <= 100 * truth <= out["R-precision"]["high"]
    assert 0.90 <= hits / draws <= 0.99, hits / draws
