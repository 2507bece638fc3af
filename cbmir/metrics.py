"""Retrieval metrics as pure, vectorised functions of labels and neighbour lists.

The paper's five (shared/protocol.md) are computed exactly as its code did:

* ``mAP@k``: AP normalised by H, the number of relevant results *within the top k*
  (0 when H = 0), not by min(k, R) as in the textbook.
* ``ACC@k``: 1 if any of the top k is relevant (a hit rate; ACC@1 is 1-NN accuracy).
* ``mMV@k``: majority vote of the top-k labels; a tie counts as correct if any tied
  class is the query's (``ties="optimistic"``). ``ties="nearest"`` breaks the tie
  by the tied class that holds the nearest result.

The standard extras use the database's relevant count R per query: textbook
``AP@k`` (normalised by min(k, R)), ``P@k`` = H / k and ``R@k`` = H / R.

Relevance: same class label. Multi-label sets (ChestMNIST): an item is relevant when
it shares at least one positive label with the query, and an all-negative query
matches all-negative items; for the vote, each distinct label vector is one class.
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


def retrieval_metrics(
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    neighbors: np.ndarray,
    *,
    k: int | None = None,
    ties: str = "optimistic",
    standard: bool = False,
) -> dict[str, float]:
    """Mean over queries, in percent: mAP@k, mMV@k, ACC@{1,3,5 up to k, k}; with ``standard``, the extras too."""
    neighbors = np.asarray(neighbors)
    k = neighbors.shape[1] if k is None else k
    if not 1 <= k <= neighbors.shape[1]:
        raise ValueError(f"k={k} needs at least k neighbours per query, got {neighbors.shape[1]}")
    neighbors = neighbors[:, :k]
    db = _as_2d(database_labels)
    rel = relevance(query_labels, db, neighbors)
    retrieved = db[neighbors] if db.shape[1] > 1 else db[neighbors][..., 0]
    out = {
        f"mAP@{k}": average_precision_paper(rel).mean(),
        f"mMV@{k}": majority_vote(query_labels, retrieved, ties=ties).mean(),
    }
    for j in sorted({*[j for j in PAPER_ACC_KS if j <= k], k}):
        out[f"ACC@{j}"] = hit_rate(rel, j).mean()
    if standard:
        n_rel = n_relevant(query_labels, db)
        hits = rel.sum(1)
        out[f"AP@{k}_textbook"] = average_precision_textbook(rel, n_rel).mean()
        out[f"P@{k}"] = (hits / k).mean()
        out[f"R@{k}"] = np.divide(hits, n_rel, out=np.zeros(len(hits)), where=n_rel > 0).mean()
        if ties == "optimistic":
            out[f"mMV@{k}_nearest"] = majority_vote(query_labels, retrieved, ties="nearest").mean()
    return {name: float(100.0 * value) for name, value in out.items()}
