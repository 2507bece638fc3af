"""MAP@R and R-precision (Musgrave et al. 2020): metrics over each query's first R ranks, R = its relevant count.

R is the number of database items relevant to the query, so it can reach tens of thousands
(TissueMNIST's largest class): far beyond the k neighbours a cell stores. These are computed
exactly from the embeddings instead, a chunk of queries at a time so memory stays bounded:
each chunk ranks the whole database in float64 and keeps its largest R. Queries are sorted
by R first, so a chunk's R are alike and little is ranked in vain.

* ``MAP@R`` = (1/R) Σ_{i ≤ R} P@i · rel_i  (AP cut at R and divided by R, not by the hits).
* ``R-precision`` = (relevant among the first R) / R.

Both are 0 for a query with no relevant database item. Ranking and ties follow
:mod:`cbmir.search.exact` (l2 on raw embeddings, cosine on unit vectors; equal distances ordered by
database index). Cost: one query-by-database product and one full sort per query row,
O(Q·N·(D + log N)); docs/statistics.md gives a measured figure.
"""

from __future__ import annotations

import numpy as np
import torch

from cbmir.metrics.retrieval import n_relevant, relevance
from cbmir.search.exact import METRICS

#: Memory a chunk may use (distances, sort keys, indices and relevance of its rows).
DEFAULT_MEMORY_MB = 512


def _rows_per_chunk(n_database: int, n_labels: int, memory_mb: int) -> int:
    per_row = n_database * (8 * 3 + 8 + 2 * n_labels)
    return max(1, int(memory_mb * 2**20 // per_row))


@torch.no_grad()
def metrics_at_r(
    database: np.ndarray,
    queries: np.ndarray,
    database_labels: np.ndarray,
    query_labels: np.ndarray,
    metric: str = "l2",
    *,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> dict[str, np.ndarray]:
    """Per-query ``{"MAP@R": (Q,), "R-precision": (Q,)}`` in [0, 1], exact, within ``memory_mb`` per chunk."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    db_labels = np.asarray(database_labels).reshape(len(database), -1)
    q_labels = np.asarray(query_labels).reshape(len(queries), -1)
    r = n_relevant(q_labels, db_labels)
    db = torch.from_numpy(np.array(database, dtype=np.float64))
    if metric == "cosine":
        db = torch.nn.functional.normalize(db, dim=1)
    db_sq = (db * db).sum(1)
    map_r, r_precision = np.zeros(len(queries)), np.zeros(len(queries))
    order = np.argsort(r, kind="stable")
    step = _rows_per_chunk(len(database), db_labels.shape[1], memory_mb)
    for start in range(0, len(order), step):
        rows = np.sort(order[start : start + step])
        r_rows = r[rows]
        r_max = int(r_rows.max())
        if r_max == 0:
            continue
        q = torch.from_numpy(np.array(queries[rows], dtype=np.float64))
        if metric == "cosine":
            key = -(torch.nn.functional.normalize(q, dim=1) @ db.T)
        else:
            key = (q * q).sum(1, keepdim=True) + db_sq[None, :] - 2 * (q @ db.T)
        # a stable sort keeps equal distances in database-index order: the ties rule of cbmir.search.exact
        ranked = torch.sort(key, dim=1, stable=True).indices[:, :r_max].numpy()
        del key
        rel = relevance(q_labels[rows], db_labels, ranked)
        within = np.arange(1, r_max + 1)[None, :] <= r_rows[:, None]
        rel &= within
        hits = np.cumsum(rel, axis=1)
        safe_r = np.maximum(r_rows, 1)
        map_r[rows] = (hits / np.arange(1, r_max + 1) * rel).sum(1) / safe_r
        r_precision[rows] = hits[:, -1] / safe_r
    return {"MAP@R": map_r, "R-precision": r_precision}
