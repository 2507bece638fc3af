"""Exact k-nearest-neighbour search: FAISS (GPU when available) with a torch oracle.

``metric="l2"`` ranks by Euclidean distance on the raw embeddings (the study's code)
and returns squared distances, as FAISS does; ``metric="cosine"`` ranks by inner
product of L2-normalised embeddings and returns cosine similarities.

Ties: both backends fetch a few candidates beyond k, rescore them exactly (float64, one
shared formula) and order them by (distance, database index). Equal vectors thus get
bit-identical scores and the lower database index wins, so FAISS (float32) and torch
(float64) return the same neighbours even for duplicated database items. Rows where a
tie group reaches the end of the candidate window are searched again with a wider one.
"""

from __future__ import annotations

import numpy as np

from cbmir.logs import get_logger

METRICS = ("l2", "cosine")
FAISS_GPU_MAX_K = 2048
#: Relative slack when checking whether a tie group may extend past the candidate window.
TIE_RTOL = 1e-4

log = get_logger(__name__)


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


def rescore(database: np.ndarray, queries: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 scores of each query against its candidate rows: one formula for every backend."""
    unique = np.unique(candidates)  # sorted: reads a memory-mapped database in order
    db = np.asarray(database[unique], dtype=np.float64)
    rows = np.searchsorted(unique, candidates)
    q = np.asarray(queries, dtype=np.float64)
    if metric == "cosine":
        return np.einsum("qd,qkd->qk", l2_normalize(q), l2_normalize(db)[rows])
    return ((db[rows] - q[:, None, :]) ** 2).sum(-1)


def order_by_score_then_index(scores: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """Positions that sort each row by (distance ascending | similarity descending), then database index."""
    return np.lexsort((candidates, scores if metric == "l2" else -scores), axis=-1)


def _window_may_cut_a_tie(raw: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Rows whose last candidate is (within float32 slack) as near as their k-th: the tie may continue beyond."""
    gap = raw[:, -1] - raw[:, k - 1] if metric == "l2" else raw[:, k - 1] - raw[:, -1]
    scale = np.abs(raw).max(1) if metric == "l2" else 1.0
    return gap <= TIE_RTOL * scale


def _tie_broken(raw_search, database, queries, k: int, metric: str, chunk: int = 512):
    """``raw_search(queries, width)`` over width > k candidates, rescored, ordered by (score, index).

    Rows whose candidate window may cut a tie group are searched again with a wider window,
    up to the whole database, so the result is exact whatever the number of duplicates.
    """
    n = len(database)
    distances = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        q = np.asarray(queries[start : start + chunk])
        rows, width = np.arange(len(q)), min(n, 2 * k + 8)
        while len(rows):
            raw, cand = raw_search(q[rows], width)
            scores = rescore(database, q[rows], cand, metric)
            order = order_by_score_then_index(scores, cand, metric)[:, :k]
            indices[start + rows] = np.take_along_axis(cand, order, 1)
            distances[start + rows] = np.take_along_axis(scores, order, 1)
            if width == n:
                break
            rows, width = rows[_window_may_cut_a_tie(raw, k, metric)], min(n, 4 * width)
    return distances, indices


def flat_index(database: np.ndarray, metric: str = "l2"):
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
    index.add(db)
    return index


def search_faiss(database: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2", *, use_gpu: bool | None = None):
    """``(distances float32 (Q, k), indices int64 (Q, k))``, nearest first, ties by database index."""

    _check(database, queries, k, metric)
    cpu_index = flat_index(database, metric)
    gpu_index = None
    if faiss_has_gpu() if use_gpu is None else use_gpu:
        from cbmir.search.placement import place_index

        # replicated on every GPU when one copy fits, else sharded, else left on the CPU (logged)
        gpu_index, _ = place_index(cpu_index, 4 * cpu_index.ntotal * cpu_index.d, shard=False)

    def raw(q: np.ndarray, width: int):
        q = np.ascontiguousarray(q, dtype=np.float32)
        if metric == "cosine":
            q = l2_normalize(q)
        index = gpu_index if gpu_index is not None and width <= FAISS_GPU_MAX_K else cpu_index
        return index.search(q, width)

    return _tie_broken(raw, database, queries, k, metric)


def search_torch(database: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2", *, device: str = "cpu"):
    """The same search with matmul + topk (fallback and test oracle), in float64 on CPU."""
    import torch  # here, not at the top: configs are validated with this module before torch is imported

    _check(database, queries, k, metric)
    with torch.no_grad():
        return _search_torch(torch, database, queries, k, metric, device)


def _search_torch(torch, database: np.ndarray, queries: np.ndarray, k: int, metric: str, device: str):
    dtype = torch.float64 if device == "cpu" else torch.float32
    db = torch.as_tensor(np.asarray(database), dtype=dtype, device=device)
    if metric == "cosine":
        db = torch.nn.functional.normalize(db, dim=1)
    db_sq = (db * db).sum(1)

    def raw(queries_chunk: np.ndarray, width: int):
        q = torch.as_tensor(queries_chunk, dtype=dtype, device=device)
        if metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=1)
        sim = q @ db.T
        if metric == "l2":
            d = ((q * q).sum(1, keepdim=True) + db_sq[None, :] - 2 * sim).clamp_min_(0)
            val, idx = torch.topk(d, width, dim=1, largest=False)
        else:
            val, idx = torch.topk(sim, width, dim=1, largest=True)
        return val.cpu().numpy(), idx.cpu().numpy().astype(np.int64)

    return _tie_broken(raw, database, queries, k, metric)


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
    import torch

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
