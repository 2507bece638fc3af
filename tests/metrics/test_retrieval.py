"""The paper's metrics and the standard ones, against hand-computed cases."""

import numpy as np
import pytest

from cbmir.metrics.at_r import metrics_at_r
from cbmir.metrics.retrieval import (
    average_precision_paper,
    average_precision_textbook,
    class_membership,
    gains,
    hit_rate,
    ideal_dcg,
    majority_vote,
    n_relevant,
    ndcg,
    per_class,
    per_query_scores,
    reciprocal_rank,
    relevance,
    retrieval_metrics,
    summarize,
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
    base = {"mAP@3", "mMV@3", "ACC@1", "ACC@3", "AP@3_textbook", "P@3", "R@3", "nDCG@3", "MRR@3"}
    assert set(m) == base | {f"{name}_macro" for name in base}
    assert m["P@3"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 2)
    assert m["R@3"] == pytest.approx(100 * (2 / 2 + 1 / 3) / 2)
    # q0: (1 + 1) / min(3, 2); q1: 1 / min(3, 3)
    assert m["AP@3_textbook"] == pytest.approx(100 * (1.0 + 1 / 3) / 2)


def test_retrieval_metrics_rejects_k_beyond_neighbours():
    with pytest.raises(ValueError, match="k=6"):
        retrieval_metrics(np.array([0]), np.array([0, 1]), np.array([[0, 1]]), k=6)


def test_macro_average_weights_classes_equally():
    db_labels = np.array([0, 0, 1, 1, 1, 2])
    neighbors = np.array([[0, 1, 2], [2, 0, 1]])
    m = retrieval_metrics(np.array([0, 1]), db_labels, neighbors, k=3, ties="nearest", standard=True)
    assert m["P@3_macro"] == pytest.approx(m["P@3"])  # one query per class: macro = micro
    # three queries of class 0 (P@3 = 1) and one of class 1 (P@3 = 0): micro 75 %, macro 50 %
    q = np.array([0, 0, 0, 1])
    nb = np.array([[0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 1, 5]])
    scores = per_query_scores(q, db_labels, nb, k=3, standard=True)
    membership, names = class_membership(q)
    summary = summarize(scores, membership)
    assert summary["P@3"] == pytest.approx(75.0) and summary["P@3_macro"] == pytest.approx(50.0)
    assert per_class(scores, membership, names)["P@3"] == {"0": pytest.approx(100.0), "1": pytest.approx(0.0)}


def test_class_membership_multilabel_has_a_none_class():
    membership, names = class_membership(np.array([[1, 0, 1], [0, 0, 0], [0, 0, 1]]))
    assert names == ["0", "2", "none"]
    np.testing.assert_array_equal(membership, [[1, 1, 0], [0, 0, 1], [0, 1, 0]])


def test_reciprocal_rank_by_hand():
    rel = np.array([[0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(reciprocal_rank(rel), [1 / 3, 1.0, 0.0])


def test_ndcg_by_hand_binary():
    # database: class 1 has 2 items (R = 2); ranking rel = [0, 1, 1] at k = 3
    db = np.array([0, 1, 1, 0, 0])
    q = np.array([1, 2])  # the second query's class is absent from the database: nDCG 0
    nb = np.array([[0, 1, 2], [0, 1, 2]])
    g = gains(q, db, nb)
    ideal = ideal_dcg(q, db, 3)
    assert ideal[0] == pytest.approx(1 + 1 / np.log2(3)) and ideal[1] == 0
    expected = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    np.testing.assert_allclose(ndcg(g, ideal), [expected, 0.0])


def test_ndcg_multilabel_jaccard_gains():
    db = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 1]])
    q = np.array([[1, 1, 0]])
    nb = np.array([[1, 3, 0]])
    # Jaccard gains of ranked items: {0}/{0,1} = 1/2; {1,2} vs {0,1} = 1/3; identical = 1
    np.testing.assert_allclose(gains(q, db, nb), [[1 / 2, 1 / 3, 1.0]])
    ideal = 1 + 0.5 / np.log2(3) + (1 / 3) / np.log2(4)  # best database order: item 0, 1, 3
    assert ideal_dcg(q, db, 3)[0] == pytest.approx(ideal)
    got = (0.5 + (1 / 3) / np.log2(3) + 1 / np.log2(4)) / ideal
    assert ndcg(gains(q, db, nb), ideal_dcg(q, db, 3))[0] == pytest.approx(got)
    # an all-negative query: all-negative items are fully relevant
    np.testing.assert_allclose(gains(np.array([[0, 0, 0]]), db, np.array([[2, 0]])), [[1.0, 0.0]])


def test_map_at_r_and_r_precision_by_hand():
    # 1-D embeddings, l2: the ranking is by distance to the query, ties by database index
    db = np.array([[0.0], [1.0], [1.0], [2.0], [3.0], [10.0]])
    db_labels = np.array([0, 1, 0, 0, 1, 2])
    q = np.array([[1.0], [10.0], [0.0]])
    q_labels = np.array([0, 1, 3])
    out = metrics_at_r(db, q, db_labels, q_labels, "l2")
    # q0 (class 0, R = 3): ranking 1 (tie, lower index first: 1 then 2), 2, 0, 3 -> rel [0, 1, 1] in the first R
    np.testing.assert_allclose(out["MAP@R"][0], (1 / 2 + 2 / 3) / 3)
    np.testing.assert_allclose(out["R-precision"][0], 2 / 3)
    # q1 (class 1, R = 2): ranking 5, 4, ... -> rel [0, 1]: AP@R = (1/2) / 2, RP = 1/2
    np.testing.assert_allclose(out["MAP@R"][1], 0.25)
    np.testing.assert_allclose(out["R-precision"][1], 0.5)
    # q2: no relevant item
    assert out["MAP@R"][2] == 0 and out["R-precision"][2] == 0


def test_map_at_r_chunks_give_the_same_numbers():
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(400, 8)), rng.normal(size=(60, 8))
    db_labels, q_labels = rng.integers(0, 4, 400), rng.integers(0, 4, 60)
    whole = metrics_at_r(db, q, db_labels, q_labels, "cosine")
    tiny = metrics_at_r(db, q, db_labels, q_labels, "cosine", memory_mb=0)  # one query per chunk
    for name in whole:
        np.testing.assert_allclose(whole[name], tiny[name], rtol=1e-12)  # only summation order differs
    # against a brute-force full ranking
    sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (db / np.linalg.norm(db, axis=1, keepdims=True)).T
    ranking = np.argsort(-sim, axis=1, kind="stable")
    rel = db_labels[ranking] == q_labels[:, None]
    r = rel.sum(1)
    for i in range(60):
        head = rel[i, : r[i]]
        ap = (np.cumsum(head) / np.arange(1, r[i] + 1) * head).sum() / r[i]
        assert whole["MAP@R"][i] == pytest.approx(ap) and whole["R-precision"][i] == pytest.approx(head.mean())


def test_map_at_r_multilabel_uses_the_shared_label_rule():
    db = np.array([[1.0], [2.0], [3.0]])
    db_labels = np.array([[1, 0], [0, 1], [1, 1]])
    out = metrics_at_r(db, np.array([[0.0]]), db_labels, np.array([[1, 0]]), "l2")
    # relevant: items 0 and 2 (R = 2); ranking 0, 1 -> rel [1, 0]: AP@R = 1/2, RP = 1/2
    assert out["MAP@R"][0] == pytest.approx(0.5) and out["R-precision"][0] == pytest.approx(0.5)


def _torchmetrics_scores(q_labels, db_labels, db, q, k):
    """torchmetrics' retrieval metrics with each query's whole database ranked (l2, ties by index)."""
    import torch
    import torchmetrics.retrieval as tr

    dist = ((q[:, None, :] - db[None]) ** 2).sum(-1)
    ranking = np.lexsort((np.broadcast_to(np.arange(len(db)), dist.shape), dist), axis=-1)
    # strictly decreasing positive scores in ranking order: no ties left for torchmetrics to average
    preds = np.empty(dist.shape)
    np.put_along_axis(preds, ranking, np.arange(len(db), 0, -1, dtype=np.float64)[None].repeat(len(q), 0), 1)
    target = relevance(q_labels, db_labels, np.broadcast_to(np.arange(len(db)), dist.shape))
    indexes = torch.arange(len(q))[:, None].expand(-1, len(db)).reshape(-1)
    p, t = torch.tensor(preds).reshape(-1), torch.tensor(target).reshape(-1)
    metrics = {
        f"mAP@{k}": tr.RetrievalMAP(top_k=k),
        f"P@{k}": tr.RetrievalPrecision(top_k=k),
        f"R@{k}": tr.RetrievalRecall(top_k=k),
        f"nDCG@{k}": tr.RetrievalNormalizedDCG(top_k=k),
        f"MRR@{k}": tr.RetrievalMRR(top_k=k),
        f"ACC@{k}": tr.RetrievalHitRate(top_k=k),
    }
    return {name: 100 * float(m(p, t, indexes=indexes)) for name, m in metrics.items()}, ranking[:, :k]


@pytest.mark.parametrize("k", [1, 5, 10])
def test_torchmetrics_oracle_where_definitions_agree(k):
    rng = np.random.default_rng(k)
    db, q = rng.normal(size=(120, 6)), rng.normal(size=(30, 6))
    db_labels, q_labels = rng.integers(0, 4, 120), rng.integers(0, 5, 30)  # class 4 has no database item
    oracle, neighbors = _torchmetrics_scores(q_labels, db_labels, db, q, k)
    ours = retrieval_metrics(q_labels, db_labels, neighbors, k=k, standard=True)
    for name, value in oracle.items():
        assert ours[name] == pytest.approx(value, abs=1e-4), name
