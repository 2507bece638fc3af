"""Exact k-nearest-neighbour search: FAISS (GPU when available) with a torch oracle.

``metric="l2"`` ranks by Euclidean distance on the raw embeddings (the study's code)
and returns squared distances, as FAISS does; ``metric="cosine"`` ranks by inner
product of L2-normalised embeddings and returns cosine similarities.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

METRICS = ("l2", "cosine")
FAISS_GPU_MAX_K = 2048

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _check(database: np.ndarray, queries: np.ndarray, k: int, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise ValueError(f"database {database.shape} and queries {queries.shape} must be 2-D with equal width")
    if not 1 <= k <= len(database):
        raise ValueError(f"k={k} must be between 1 and the database size {len(database)}")


def faiss_has_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def flat_index(database: np.ndarray, metric: str = "l2", *, gpu: bool = False):
    """The exact FAISS index of ``database`` (flat L2, or inner product of unit vectors for cosine), filled.

    Queries of a cosine index must be L2-normalised as well (:func:`l2_normalize`).
    """
    import faiss

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    db = np.ascontiguousarray(database, dtype=np.float32)
    if metric == "cosine":
        db = l2_normalize(db)
    index = faiss.IndexFlatL2(db.shape[1]) if metric == "l2" else faiss.IndexFlatIP(db.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(db)
    return index


def search_faiss(database: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2", *, use_gpu: bool | None = None):
    """``(distances float32 (Q, k), indices int64 (Q, k))``, nearest first."""
    _check(database, queries, k, metric)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == "cosine":
        q = l2_normalize(q)
    gpu = faiss_has_gpu() if use_gpu is None else use_gpu
    index = flat_index(database, metric, gpu=gpu and k <= FAISS_GPU_MAX_K)
    distances, indices = index.search(q, k)
    return distances.astype(np.float32), indices.astype(np.int64)


@torch.no_grad()
def search_torch(
    database: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2", *, device: str = "cpu", chunk: int = 1024
):
    """The same search with matmul + topk (fallback and test oracle), in float64 on CPU for exactness."""
    _check(database, queries, k, metric)
    dtype = torch.float64 if device == "cpu" else torch.float32
    db = torch.as_tensor(np.asarray(database), dtype=dtype, device=device)
    q_all = torch.as_tensor(np.asarray(queries), dtype=dtype, device=device)
    if metric == "cosine":
        db = torch.nn.functional.normalize(db, dim=1)
        q_all = torch.nn.functional.normalize(q_all, dim=1)
    db_sq = (db * db).sum(1)
    dists, idxs = [], []
    for start in range(0, len(q_all), chunk):
        q = q_all[start : start + chunk]
        sim = q @ db.T
        if metric == "l2":
            d = ((q * q).sum(1, keepdim=True) + db_sq[None, :] - 2 * sim).clamp_min_(0)
            val, idx = torch.topk(d, k, dim=1, largest=False)
        else:
            val, idx = torch.topk(sim, k, dim=1, largest=True)
        dists.append(val.float().cpu())
        idxs.append(idx.cpu())
    return torch.cat(dists).numpy(), torch.cat(idxs).numpy().astype(np.int64)


def search(database: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2", *, backend: str = "auto"):
    """FAISS when installed (``backend="auto"|"faiss"``), else torch (``"torch"``)."""
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"search backend must be auto, faiss or torch, got {backend!r}")
    if backend != "torch":
        try:
            import faiss  # noqa: F401
        except ImportError:
            if backend == "faiss":
                raise
            log.warning("faiss is not installed; searching with torch")
        else:
            return search_faiss(database, queries, k, metric)
    return search_torch(database, queries, k, metric, device="cuda" if torch.cuda.is_available() else "cpu")


def drop_same_group(
    distances: np.ndarray, indices: np.ndarray, database_groups: np.ndarray, query_groups: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``k`` neighbours of each query that are not of its own group, in rank order.

    Returns ``(distances (Q, k), indices (Q, k), short (Q,))``; ``short`` marks rows with fewer than
    ``k`` neighbours left, whose missing slots hold index -1 (and distance NaN): search them deeper.
    """
    same = np.asarray(database_groups)[indices] == np.asarray(query_groups)[:, None]
    order = np.argsort(same, axis=1, kind="stable")[:, :k]  # other groups first, each side in rank order
    kept_d = np.take_along_axis(distances, order, axis=1).astype(np.float32)
    kept_i = np.take_along_axis(indices, order, axis=1)
    missing = np.take_along_axis(same, order, axis=1)
    kept_d[missing], kept_i[missing] = np.nan, -1
    return kept_d, kept_i, missing.any(axis=1)


def search_excluding_group(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    database_groups: np.ndarray,
    query_groups: np.ndarray,
    *,
    backend: str = "auto",
):
    """:func:`search` without the query's own group (patient): k + extra neighbours, extra doubling until enough."""
    from cbmir.errors import DataError

    database_groups, query_groups = np.asarray(database_groups), np.asarray(query_groups)
    names, counts = np.unique(database_groups, return_counts=True)
    in_own_group = dict(zip(names.tolist(), counts.tolist()))
    available = len(database) - np.array([in_own_group.get(g, 0) for g in query_groups.tolist()], dtype=np.int64)
    if len(available) and available.min() < k:
        worst = int(np.argmin(available))
        raise DataError(
            f"query {worst} (group {query_groups[worst]!r}) has only {available[worst]} database items outside its "
            f"group, fewer than k={k}: lower k or set protocol.exclude_same_group=false"
        )
    out_d = np.empty((len(queries), k), dtype=np.float32)
    out_i = np.empty((len(queries), k), dtype=np.int64)
    rows, extra = np.arange(len(queries)), k
    while rows.size:
        depth = min(len(database), k + extra)
        d, i = search(database, np.asarray(queries)[rows], depth, metric, backend=backend)
        kept_d, kept_i, short = drop_same_group(d, i, database_groups, query_groups[rows], k)
        if depth == len(database) and short.any():  # impossible after the check above; never loop forever
            raise RuntimeError("exclude_same_group: the whole database was searched and k neighbours are missing")
        out_d[rows[~short]], out_i[rows[~short]] = kept_d[~short], kept_i[~short]
        rows, extra = rows[short], extra * 2
    return out_d, out_i
