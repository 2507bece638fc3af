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


def search_faiss(database: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2", *, use_gpu: bool | None = None):
    """``(distances float32 (Q, k), indices int64 (Q, k))``, nearest first."""
    import faiss

    _check(database, queries, k, metric)
    db = np.ascontiguousarray(database, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == "cosine":
        db, q = l2_normalize(db), l2_normalize(q)
    index = faiss.IndexFlatL2(db.shape[1]) if metric == "l2" else faiss.IndexFlatIP(db.shape[1])
    gpu = faiss_has_gpu() if use_gpu is None else use_gpu
    index.add(db)
    if gpu and k <= FAISS_GPU_MAX_K:
        from cbmir.placement import place_index

        # replicated on every GPU when one copy fits, else sharded, else left on the CPU (logged)
        index, _ = place_index(index, db.nbytes, shard=False)
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
