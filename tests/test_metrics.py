"""The paper's metrics and the standard ones, against hand-computed cases."""

import numpy as np
import pytest

from cbmir.metrics import (
    average_precision_paper,
    average_precision_textbook,
    hit_rate,
    majority_vote,
    n_relevant,
    relevance,
    retrieval_metrics,
)


def test_ap_paper_normalises_by_hits_in_top_k():
    rel = np.array([[1, 1, 0, 1, 0]])
    assert average_precision_paper(rel)[0] == pytest.approx((1 / 1 + 2 / 2 + 3 / 4) / 3)
    assert average_precision_paper(rel)[0] == pytest.approx(0.916667, abs=1e-6)


def test_ap_paper_edge_cases():
    rel = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_allclose(average_precision_paper(rel), [1.0, 0.0, 0.2, 1.0])


def test_ap_textbook_normalises_by_min_k_r():
    rel = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 1]])
    # R = 10 -> min(5, 10) = 5; R = 2 -> 2
    got = average_precision_textbook(rel, np.array([10, 2]))
    np.testing.assert_allclose(got, [(1 + 1 + 0.75) / 5, 0.2 / 2])
    assert average_precision_textbook(np.array([[0, 0]]), np.array([0]))[0] == 0.0


def test_hit_rate_is_any_relevant_in_top_k():
    rel = np.array([[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(hit_rate(rel, 1), [0, 1, 0])
    np.testing.assert_array_equal(hit_rate(rel, 3), [1, 1, 0])
    np.testing.assert_array_equal(hit_rate(rel, 5), [1, 1, 0])


def test_majority_vote_2_2_1_tie():
    # Two votes for class 1, two for class 2, one for class 0; nearest result is class 2.
    retrieved = np.array([[2, 1, 1, 2, 0]] * 3)
    query = np.array([1, 2, 0])
    # optimistic: any tied class counts -> queries 1 and 2 are correct, query 0 is not
    np.testing.assert_array_equal(majority_vote(query, retrieved, ties="optimistic"), [1, 1, 0])
    # nearest: the tied class with the nearest result (2, at rank 1) wins
    np.testing.assert_array_equal(majority_vote(query, retrieved, ties="nearest"), [0, 1, 0])


def test_majority_vote_clear_winner():
    retrieved = np.array([[3, 3, 1, 3, 2], [0, 1, 1, 2, 1]])
    np.testing.assert_array_equal(majority_vote(np.array([3, 0]), retrieved), [1, 0])


def test_relevance_single_and_multilabel():
    db = np.array([[0], [1], [2], [1]])
    rel = relevance(np.array([[1], [2]]), db, np.array([[1, 0, 3], [2, 2, 0]]))
    np.testing.assert_array_equal(rel, [[True, False, True], [True, True, False]])
    # ChestMNIST rule: share one positive label; all-negative matches all-negative
    db_ml = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]])
    q_ml = np.array([[0, 1, 0], [0, 0, 0]])
    rel = relevance(q_ml, db_ml, np.array([[0, 1, 2, 3], [0, 1, 2, 3]]))
    np.testing.assert_array_equal(rel, [[False, True, False, True], [False, False, True, False]])


def test_n_relevant_counts_database_items():
    db = np.array([[0], [1], [1], [2], [1]])
    np.testing.assert_array_equal(n_relevant(np.array([[1], [0], [3]]), db), [3, 1, 0])
    db_ml = np.array([[1, 0], [0, 1], [0, 0], [0, 0], [1, 1]])
    np.testing.assert_array_equal(n_relevant(np.array([[1, 0], [0, 0], [0, 1]]), db_ml), [2, 2, 2])


def test_retrieval_metrics_paper_set_in_percent():
    db_labels = np.array([0, 0, 1, 1, 1, 2])
    neighbors = np.array([[0, 1, 2, 3, 4], [2, 0, 1, 5, 3]])
    q_labels = np.array([0, 1])
    m = retrieval_metrics(q_labels, db_labels, neighbors, k=5)
    assert list(m) == ["mAP@5", "mMV@5", "ACC@1", "ACC@3", "ACC@5"]
    # q0: rel [1,1,0,0,0] -> AP 1; q1: rel [1,0,0,0,1] -> (1 + 2/5)/2 = 0.7
    assert m["mAP@5"] == pytest.approx(100 * (1 + 0.7) / 2)
    # q0 votes {0:2, 1:3} -> wrong; q1 votes {1:2, 0:2, 2:1} -> tie incl. 1 -> correct (optimistic)
    assert m["mMV@5"] == pytest.approx(50.0)
    assert m["ACC@1"] == pytest.approx(100.0)
    assert m["ACC@3"] == pytest.approx(100.0)


def test_retrieval_metrics_standard_extras():
    db_labels = np.array([0, 0, 1, 1, 1, 2])
    neighbors = np.array([[0, 1, 2], [2, 0, 1]])
    m = retrieval_metrics(np.array([0, 1]), db_labels, neighbors, k=3, ties="nearest", standard=True)
    assert set(m) == {"mAP@3", "mMV@3", "ACC@1", "ACC@3", "AP@3_textbook", "P@3", "R@3"}
    assert m["P@3"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 2)
    assert m["R@3"] == pytest.approx(100 * (2 / 2 + 1 / 3) / 2)
    # q0: (1 + 1) / min(3, 2); q1: 1 / min(3, 3)
    assert m["AP@3_textbook"] == pytest.approx(100 * (1.0 + 1 / 3) / 2)


def test_retrieval_metrics_rejects_k_beyond_neighbours():
    with pytest.raises(ValueError, match="k=6"):
        retrieval_metrics(np.array([0]), np.array([0, 1]), np.array([[0, 1]]), k=6)
