"""Diagnostics of a cell's neighbour lists: hubness and a leakage audit (stored in result.json under "diagnostics").

* Hubness (Radovanović et al. 2010): N_k(x) counts how often database item x is among a
  query's k nearest neighbours. In high dimensions a few "hubs" appear in very many lists;
  the skewness of the N_k distribution over database items measures it (0 = symmetric,
  large positive = hubs). The most frequent items are named for a small gallery.
* Leakage audit: a query whose nearest database item has (nearly) the same embedding is a
  probable duplicate of it: ||q - x|| <= tolerance · ||q||. Given the images, the audit also
  counts the pixel-identical pairs among them. The headline metrics are recomputed with
  those queries left out, so a reader sees how much duplicates flatter the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats as sps

#: Most flagged query indices written to result.json (the count is always complete).
MAX_LISTED = 100


def k_occurrence(neighbors: np.ndarray, n_database: int) -> np.ndarray:
    """N_k per database item: how many queries list it among their k neighbours."""
    return np.bincount(np.asarray(neighbors).ravel(), minlength=n_database)


def hubness(neighbors: np.ndarray, n_database: int, *, top: int = 10) -> dict[str, Any]:
    """Skewness of N_k (Radovanović et al. 2010), its largest values and the indices of the top hubs."""
    counts = k_occurrence(neighbors, n_database)
    order = np.argsort(-counts, kind="stable")[:top]
    skew = float(sps.skew(counts)) if np.ptp(counts) > 0 else 0.0
    return {
        "k": int(np.asarray(neighbors).shape[1]),
        "skewness": skew,
        "max_occurrence": int(counts.max()),
        "never_retrieved": int((counts == 0).sum()),
        "top_hubs": [int(i) for i in order],
        "top_hub_occurrences": [int(counts[i]) for i in order],
    }


def near_duplicates(database: np.ndarray, queries: np.ndarray, nearest: np.ndarray, tolerance: float) -> np.ndarray:
    """Bool per query: is its nearest database item within ``tolerance · ||q||`` in embedding space?"""
    flagged = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), 4096):
        q = np.asarray(queries[start : start + 4096], dtype=np.float64)
        idx = nearest[start : start + 4096]
        unique, rows = np.unique(idx, return_inverse=True)
        x = np.asarray(database[unique], dtype=np.float64)[rows.reshape(-1)]
        gap = np.linalg.norm(q - x, axis=1)
        flagged[start : start + 4096] = gap <= tolerance * np.linalg.norm(q, axis=1)
    return flagged


def pixel_identical(
    query_images: np.ndarray, database_images: np.ndarray, nearest: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """Bool per query: is its image identical to its nearest database item's (checked for ``candidates`` only)?"""
    same = np.zeros(len(nearest), dtype=bool)
    for i in np.flatnonzero(candidates):
        same[i] = np.array_equal(np.asarray(query_images[i]), np.asarray(database_images[nearest[i]]))
    return same


def leakage_audit(
    database: np.ndarray,
    queries: np.ndarray,
    neighbors: np.ndarray,
    scores: Mapping[str, np.ndarray],
    *,
    tolerance: float = 1e-4,
    images: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Near-duplicate queries, the pixel-identical ones among them, and the metrics (percent) without them."""
    nearest = np.asarray(neighbors)[:, 0]
    flagged = near_duplicates(database, queries, nearest, tolerance)
    out: dict[str, Any] = {
        "tolerance": tolerance,
        "n_near_duplicates": int(flagged.sum()),
        "near_duplicate_queries": [int(i) for i in np.flatnonzero(flagged)[:MAX_LISTED]],
    }
    if images is not None:
        identical = pixel_identical(images["query"], images["database"], nearest, flagged)
        out["n_pixel_identical"] = int(identical.sum())
    kept = ~flagged
    out["metrics_without_near_duplicates"] = (
        {name: float(100.0 * np.asarray(v)[kept].mean()) for name, v in scores.items()} if kept.any() else {}
    )
    return out
