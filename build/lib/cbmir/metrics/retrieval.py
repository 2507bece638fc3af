"""Retrieval metrics as pure, vectorised functions of labels and neighbour lists.

The paper's five (shared/protocol.md) are computed exactly as its code did:

* ``mAP@k``: AP normalised by H, the number of relevant results *within the top k*
  (0 when H = 0), not by min(k, R) as in the textbook.
* ``ACC@k``: 1 if any of the top k is relevant (a hit rate; ACC@1 is 1-NN accuracy).
* ``mMV@k``: majority vote of the top-k labels; a tie counts as correct if any tied
  class is the query's (``ties="optimistic"``). ``ties="nearest"`` breaks the tie
  by the tied class that holds the nearest result.

The standard extras use the database's relevant count R per query: textbook
``AP@k`` (normalised by min(k, R)), ``P@k`` = H / k, ``R@k`` = H / R, ``nDCG@k``
(linear gains, ideal ranking taken from the whole database), ``MRR@k`` (1 / rank of the
first relevant result, 0 when none is in the top k), and from the full ranking
(:mod:`cbmir.metrics.at_r`) ``MAP@R`` and ``R-precision``. Each is also averaged per class
and then over classes (``<name>_macro``): a small class counts as much as a large one.

Every metric is first a per-query score (:func:`per_query_scores`, in [0, 1]); the cell's
numbers are their means in percent (:func:`summarize`), so intervals and paired tests over
queries (:mod:`cbmir.stats.bootstrap`) start from the same values as the headline.

torchmetrics as oracle (tests/test_metrics.py): ``RetrievalMAP(top_k=k)`` is the paper's
hit-normalised ``mAP@k`` (not the textbook ``AP@k``, which divides by min(k, R)); ``P@k``,
``R@k``, ``nDCG@k``, ``MRR@k`` and ``ACC@k`` (``RetrievalHitRate``) agree with their
torchmetrics namesakes when those see the whole database ranked. ``mMV@k`` (a vote, with the
paper's optimistic tie rule) and ``MAP@R`` (AP over R ranks divided by R, where
``RetrievalMAP(top_k=R)`` would divide by the hits) have no torchmetrics equivalent.

Relevance: same class label. Multi-label sets (ChestMNIST): an item is relevant when
it shares at least one positive label with the query, and an all-negative query
matches all-negative items; for the vote, each distinct label vector is one class.
nDCG's gain is graded there: the Jaccard overlap of the two label sets (1 for two
all-negative items), so sharing 2 of 2 findings counts more than 1 of 3. Classes for the
macro average: each positive label a query carries, plus ``none`` for all-negative queries.
"""

from __future__ import annotations

import numpy as np

PAPER_ACC_KS = (1, 3, 5)
TIE_RULES = ("optimistic", "nearest")


def _as_2d(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return labels[:, None] if labels.ndim == 1 else labels


def relevance(query_labels: np.ndarray, database_labels: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Boolean ``(Q, k)``: is the database item at each rank relevant to its query?"""
    q, db = _as_2d(query_labels), _as_2d(database_labels)
    retrieved = db[neighbors]  # (Q, k, L)
    if q.shape[1] == 1:
        return retrieved[..., 0] == q
    q_pos, r_pos = q.astype(bool)[:, None, :], retrieved.astype(bool)
    shares = (q_pos & r_pos).any(-1)
    both_negative = ~q_pos.any(-1) & ~r_pos.any(-1)
    return shares | both_negative


def n_relevant(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """R per query: how many database items are relevant to it (grouped by distinct label vectors)."""
    q, db = _as_2d(query_labels), _as_2d(database_labels)
    patterns, inverse = np.unique(q, axis=0, return_inverse=True)
    counts = np.empty(len(patterns), dtype=np.int64)
    for j, p in enumerate(patterns):
        if q.shape[1] == 1:
            counts[j] = int((db[:, 0] == p[0]).sum())
        elif p.any():
            counts[j] = int((db.astype(bool) & p.astype(bool)).any(1).sum())
        else:
            counts[j] = int((~db.astype(bool).any(1)).sum())
    return counts[inverse.reshape(-1)]


def average_precision_paper(rel: np.ndarray) -> np.ndarray:
    """Per-query AP over the given ranks, normalised by the hits H among them (the paper's code)."""
    rel = np.asarray(rel, dtype=np.float64)
    ranks = np.arange(1, rel.shape[1] + 1)
    precision_at_i = np.cumsum(rel, axis=1) / ranks
    hits = rel.sum(1)
    total = (precision_at_i * rel).sum(1)
    return np.divide(total, hits, out=np.zeros_like(total), where=hits > 0)


def average_precision_textbook(rel: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """Per-query AP@k normalised by min(k, R); 0 when the database holds nothing relevant."""
    rel = np.asarray(rel, dtype=np.float64)
    k = rel.shape[1]
    precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    denom = np.minimum(k, np.asarray(n_rel)).astype(np.float64)
    total = (precision_at_i * rel).sum(1)
    return np.divide(total, denom, out=np.zeros_like(total), where=denom > 0)


def hit_rate(rel: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(rel)[:, :k].any(1).astype(np.float64)


def reciprocal_rank(rel: np.ndarray) -> np.ndarray:
    """1 / rank of the first relevant result among the given ranks, 0 when there is none."""
    rel = np.asarray(rel, dtype=bool)
    first = np.argmax(rel, axis=1)
    return np.where(rel.any(1), 1.0 / (first + 1), 0.0)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def gains(query_labels: np.ndarray, database_labels: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """nDCG gains ``(Q, k)``: 1/0 relevance for single labels; Jaccard overlap of label sets for multi-label."""
    q, db = _as_2d(query_labels), _as_2d(database_labels)
    if q.shape[1] == 1:
        return relevance(q, db, neighbors).astype(np.float64)
    return _jaccard(q.astype(bool)[:, None, :], db.astype(bool)[neighbors])


def _jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter, union = (a & b).sum(-1), (a | b).sum(-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def ideal_dcg(query_labels: np.ndarray, database_labels: np.ndarray, k: int) -> np.ndarray:
    """DCG@k of the best possible ranking of the whole database, per query."""
    q, db = _as_2d(query_labels), _as_2d(database_labels)
    discount = _discounts(k)
    if q.shape[1] == 1:
        n_rel = n_relevant(q, db)
        return np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(k, n_rel)]
    patterns, inverse = np.unique(q.astype(bool), axis=0, return_inverse=True)
    db_patterns, db_counts = np.unique(db.astype(bool), axis=0, return_counts=True)
    ideal = np.empty(len(patterns))
    for j, p in enumerate(patterns):
        g = _jaccard(p[None, :], db_patterns)
        order = np.argsort(-g, kind="stable")
        best = np.repeat(g[order], np.minimum(db_counts[order], k))[:k]
        ideal[j] = (best * discount[: len(best)]).sum()
    return ideal[inverse.reshape(-1)]


def ndcg(gain: np.ndarray, ideal: np.ndarray) -> np.ndarray:
    """DCG of the retrieved gains over the ideal DCG (0 when nothing in the database is relevant)."""
    dcg = (np.asarray(gain, dtype=np.float64) * _discounts(gain.shape[1])).sum(1)
    return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


def _class_ids(query_labels: np.ndarray, retrieved_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels (scalars or multi-label vectors) to dense class ids shared by queries and results."""
    q = _as_2d(query_labels)
    qn, k = len(q), retrieved_labels.shape[1]
    r = retrieved_labels.reshape(qn * k, -1)
    _, inverse = np.unique(np.concatenate([q, r]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse[:qn], inverse[qn:].reshape(qn, k)


def majority_vote(query_labels: np.ndarray, retrieved_labels: np.ndarray, *, ties: str = "optimistic") -> np.ndarray:
    """Per-query 1/0: does the majority label of the retrieved items equal the query's?

    ``retrieved_labels``: ``(Q, k)`` class ids or ``(Q, k, L)`` label vectors, nearest first.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    q_ids, r_ids = _class_ids(query_labels, np.asarray(retrieved_labels))
    n_classes = int(max(q_ids.max(initial=0), r_ids.max(initial=0))) + 1
    qn, k = r_ids.shape
    counts = np.zeros((qn, n_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(qn), k), r_ids.reshape(-1)), 1)
    tied = counts == counts.max(1, keepdims=True)
    if ties == "optimistic":
        return tied[np.arange(qn), q_ids].astype(np.float64)
    # nearest: the first rank whose class is among the tied ones decides
    first_tied_rank = np.argmax(tied[np.arange(qn)[:, None], r_ids], axis=1)
    winner = r_ids[np.arange(qn), first_tied_rank]
    return (winner == q_ids).astype(np.float64)


def per_query_scores(
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    neighbors: np.ndarray,
    *,
    k: int | None = None,
    ties: str = "optimistic",
    standard: bool = False,
) -> dict[str, np.ndarray]:
    """Each metric's score for each query, in [0, 1]: mAP@k, mMV@k, ACC@{1,3,5 up to k, k}; with ``standard``,
    AP@k_textbook, P@k, R@k, nDCG@k, MRR@k (and mMV@k_nearest beside an optimistic vote)."""
    neighbors = np.asarray(neighbors)
    k = neighbors.shape[1] if k is None else k
    if not 1 <= k <= neighbors.shape[1]:
        raise ValueError(f"k={k} needs at least k neighbours per query, got {neighbors.shape[1]}")
    neighbors = neighbors[:, :k]
    db = _as_2d(database_labels)
    rel = relevance(query_labels, db, neighbors)
    retrieved = db[neighbors] if db.shape[1] > 1 else db[neighbors][..., 0]
    out = {
        f"mAP@{k}": average_precision_paper(rel),
        f"mMV@{k}": majority_vote(query_labels, retrieved, ties=ties),
    }
    for j in sorted({*[j for j in PAPER_ACC_KS if j <= k], k}):
        out[f"ACC@{j}"] = hit_rate(rel, j)
    if standard:
        n_rel = n_relevant(query_labels, db)
        hits = rel.sum(1)
        out[f"AP@{k}_textbook"] = average_precision_textbook(rel, n_rel)
        out[f"P@{k}"] = hits / k
        out[f"R@{k}"] = np.divide(hits, n_rel, out=np.zeros(len(hits)), where=n_rel > 0)
        out[f"nDCG@{k}"] = ndcg(gains(query_labels, db, neighbors), ideal_dcg(query_labels, db, k))
        out[f"MRR@{k}"] = reciprocal_rank(rel)
        if ties == "optimistic":
            out[f"mMV@{k}_nearest"] = majority_vote(query_labels, retrieved, ties="nearest")
    return out


def class_membership(query_labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``(Q, C)`` bool: which classes each query belongs to, and the class names (label values; ``none``)."""
    q = _as_2d(query_labels)
    if q.shape[1] == 1:
        classes = np.unique(q[:, 0])
        return q[:, :1] == classes[None, :], [str(int(c)) for c in classes]
    positive = q.astype(bool)
    present = np.flatnonzero(positive.any(0))
    columns, names = [positive[:, present]], [str(int(j)) for j in present]
    negative = ~positive.any(1)
    if negative.any():
        columns.append(negative[:, None])
        names.append("none")
    return np.concatenate(columns, axis=1), names


def class_means(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """Mean score of each class's queries (every class in ``membership`` has at least one)."""
    m = np.asarray(membership, dtype=np.float64)
    return (np.asarray(scores, dtype=np.float64) @ m) / m.sum(0)


def summarize(scores: dict[str, np.ndarray], membership: np.ndarray | None = None) -> dict[str, float]:
    """Percent means of per-query scores; with ``membership``, each also macro-averaged (``<name>_macro``)."""
    out = {name: float(100.0 * np.mean(values)) for name, values in scores.items()}
    if membership is not None:
        out |= {f"{name}_macro": float(100.0 * class_means(v, membership).mean()) for name, v in scores.items()}
    return out


def per_class(scores: dict[str, np.ndarray], membership: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """``{metric: {class: percent}}`` for a per-class table."""
    return {
        metric: {c: float(100.0 * v) for c, v in zip(names, class_means(values, membership))}
        for metric, values in scores.items()
    }


def retrieval_metrics(
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    neighbors: np.ndarray,
    *,
    k: int | None = None,
    ties: str = "optimistic",
    standard: bool = False,
) -> dict[str, float]:
    """Mean over queries, in percent: the paper's five; with ``standard``, the extras and their macro averages."""
    scores = per_query_scores(query_labels, database_labels, neighbors, k=k, ties=ties, standard=standard)
    return summarize(scores, class_membership(query_labels)[0] if standard else None)
