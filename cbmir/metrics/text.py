"""Metrics of the text protocols: text → image (one query per class) and zero-shot image → text (one per image).

``protocol=text``: each class's prompt ensemble ranks every database image by cosine; relevant = the image
has the class (multi-label: contains it). Per class: MAP@R and R-precision (Musgrave et al. 2020) over the full
ranking, P@k, nDCG@k and mAP@k over the first k (:mod:`cbmir.metrics.retrieval`). With one query per class
there are too few queries to resample, so the intervals come from a bootstrap over **database items**
(:func:`database_bootstrap`): the database is redrawn with replacement, the class queries stay.

``protocol=zeroshot``: each query image ranks the class ensembles; ``ACC@1`` = the top class is one of the
image's labels (zero-shot classification accuracy), ``ACC@j`` = one of the top j is. Named like image-kNN's
``ACC@1`` (a hit in the first rank) so that a paired test compares the two on the same query images.
"""

from __future__ import annotations

import numpy as np

from cbmir.metrics.at_r import metrics_at_r
from cbmir.metrics.retrieval import _as_2d, per_query_scores, relevance
from cbmir.stats.bootstrap import StatsSettings, interval, interval_record, resample_counts

#: the k-neighbour metrics of the text protocol (of per_query_scores' standard set)
TEXT_AT_K = ("P@{k}", "nDCG@{k}", "mAP@{k}")
#: the metrics the database bootstrap gives intervals for
BOOTSTRAPPED = ("MAP@R", "R-precision", "P@{k}")


def class_query_labels(n_classes: int, database_labels: np.ndarray) -> np.ndarray:
    """Labels of the class queries: ``(C, 1)`` class ids for single-label data, ``(C, L)`` one-hot for multi-label."""
    db = _as_2d(database_labels)
    if db.shape[1] == 1:
        return np.arange(n_classes, dtype=np.int64)[:, None]
    return np.eye(db.shape[1], dtype=np.int64)[:n_classes]


def ranking(class_embeddings: np.ndarray, database: np.ndarray) -> np.ndarray:
    """``(C, N)`` database indices by decreasing cosine (float64; equal scores in index order, as exact search)."""
    q = np.asarray(class_embeddings, dtype=np.float64)
    db = np.asarray(database, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    db = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    return np.argsort(-(q @ db.T), axis=1, kind="stable")


def text_to_image_scores(
    class_embeddings: np.ndarray, database: np.ndarray, database_labels: np.ndarray, k: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-class-query scores in [0, 1] (MAP@R, R-precision, P@k, nDCG@k, mAP@k) and the full ranking."""
    q_labels = class_query_labels(len(class_embeddings), database_labels)
    order = ranking(class_embeddings, database)
    k = min(k, order.shape[1])
    at_k = per_query_scores(q_labels, database_labels, order[:, :k], k=k, standard=True)
    scores = metrics_at_r(database, class_embeddings, database_labels, q_labels, "cosine")
    scores |= {name.format(k=k): at_k[name.format(k=k)] for name in TEXT_AT_K}
    return scores, order


def _resampled(rel: np.ndarray, counts: np.ndarray, k: int) -> tuple[float, float, float]:
    """MAP@R, R-precision and P@k of one ranked relevance vector when item i appears ``counts[i]`` times."""
    expanded = np.repeat(rel, counts)
    r = int(expanded.sum())
    if r == 0:
        return 0.0, 0.0, 0.0
    head = expanded[: max(r, k)].astype(np.float64)
    hits = np.cumsum(head)
    ranks = np.arange(1, len(head) + 1)
    within = head[:r]
    map_r = float((hits[:r] / ranks[:r] * within).sum() / r)
    return map_r, float(hits[r - 1] / r), float(hits[k - 1] / k) if len(hits) >= k else float(hits[-1] / k)


def database_bootstrap(
    order: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    k: int,
    settings: StatsSettings,
    resamples: int,
) -> dict[str, dict]:
    """Percentile intervals of the class-averaged MAP@R, R-precision and P@k over database resamples.

    Each resample redraws the N database items with replacement (``cbmir.stats.bootstrap.resample_counts``,
    seeded); an item drawn twice appears twice in every class's ranking. The queries (the class prompts)
    are fixed: the interval says how much the figure depends on which images the database happens to hold.
    """
    rel = relevance(query_labels, database_labels, order)  # (C, N) in ranked order
    observed = np.array([_resampled(rel[c], np.ones(order.shape[1], dtype=np.int64), k) for c in range(len(order))])
    boot = []
    for chunk in resample_counts(order.shape[1], resamples, settings.seed):
        for counts in chunk.astype(np.int64):
            boot.append(np.mean([_resampled(rel[c], counts[order[c]], k) for c in range(len(order))], axis=0))
    boot_arr = np.asarray(boot)
    out = {}
    for j, name in enumerate(BOOTSTRAPPED):
        low, high = interval(float(observed[:, j].mean()), boot_arr[:, j], settings)
        out[name.format(k=k)] = {
            **interval_record(low, high, settings),
            "resamples": resamples,
            "over": "database items",
        }
    return out


def zeroshot_scores(
    images: np.ndarray, class_embeddings: np.ndarray, query_labels: np.ndarray, ks: tuple[int, ...] = (1, 3, 5)
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-image ``ACC@j`` in [0, 1] for each j < C in ``ks`` (and 1), and the predicted class ranking ``(Q, C)``."""
    order = ranking(images, class_embeddings)  # (Q, C): each image ranks the classes
    n_classes = order.shape[1]
    labels = _as_2d(query_labels)
    if labels.shape[1] == 1:
        hit = order == labels[:, :1]
    else:
        hit = np.take_along_axis(labels.astype(bool), order, axis=1)
    out = {}
    for j in sorted({1, *[j for j in ks if j < n_classes]}):
        out[f"ACC@{j}"] = hit[:, :j].any(1).astype(np.float64)
    return out, order
