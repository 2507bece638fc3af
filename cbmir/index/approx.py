"""Approximate search in an index (``index.faiss=IVF…``): FAISS's own add and ID-selector removal, recall, drift.

An approximate index keeps a stable 64-bit id per item (``ids.npy``, ascending: new items get
larger ids, removals keep the order), so FAISS's ``add_with_ids`` and ``remove_ids`` edit the
trained index in place of a rebuild, and a search maps ids back to rows by binary search. Only
inverted-file indexes (``IVF…``) are accepted: they store ids natively and remove by selector.

Each generation re-measures recall@k against exact search (a seeded sample of stored vectors as
queries) and the coarse quantiser's drift since training: the imbalance of list sizes and the mean
distance of items to their centroid. When either has grown by more than :data:`DRIFT` the
manifest (and ``cbmir index info``) says that retraining (a rebuild) is advisable.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import numpy as np

from cbmir.errors import ConfigError

IDS = "ids.npy"
#: Growth over the build's values that makes retraining advisable (imbalance, mean distance to centroid).
DRIFT = 1.5
RECALL_SAMPLE = 256
RECALL_K = 10


def check_factory(factory: str, nprobe: Any) -> None:
    if factory == "Flat":
        return
    if not re.fullmatch(r"(PCA\d+,)?IVF\d+,(Flat|SQ8|SQfp16|PQ\d+(x\d+)?)", str(factory)):
        raise ConfigError(
            f"index.faiss={factory!r}: an index grows and shrinks through FAISS's ids, which inverted files keep; "
            "use Flat (exact) or IVF<lists>,Flat | SQ8 | SQfp16 | PQ<m>"
        )
    if not isinstance(nprobe, int) or isinstance(nprobe, bool) or nprobe < 1:
        raise ConfigError(f"index.nprobe (inverted lists searched per query) must be an integer >= 1, got {nprobe!r}")


def _unit(vectors: np.ndarray, metric: str) -> np.ndarray:
    from cbmir.search.exact import l2_normalize

    v = np.ascontiguousarray(vectors, dtype=np.float32)
    return l2_normalize(v) if metric == "cosine" else v


def ivf(index: Any):
    import faiss

    return faiss.extract_index_ivf(index)


def train(vectors: np.ndarray, metric: str, factory: str, nprobe: int, seed: int = 0):
    """A trained, filled IVF index with ids ``0..N-1`` (trained on a seeded sample as the study's search does)."""
    from cbmir.search.approximate import make_index, training_sample

    v = _unit(vectors, metric)
    lists = int(re.search(r"IVF(\d+)", factory).group(1))
    if len(v) < lists:
        raise ConfigError(f"index.faiss={factory} needs at least {lists} items to train, the index has {len(v)}")
    index = make_index(v.shape[1], factory, metric)
    index.train(training_sample(v, 100_000, seed))
    index.add_with_ids(v, np.arange(len(v), dtype=np.int64))
    ivf(index).nprobe = nprobe
    return index


def added(index: Any, vectors: np.ndarray, ids: np.ndarray, metric: str):
    """A copy of ``index`` with ``vectors`` added under ``ids`` (FAISS's own add; no retraining)."""
    import faiss

    out = faiss.clone_index(index)
    out.add_with_ids(_unit(vectors, metric), np.ascontiguousarray(ids, dtype=np.int64))
    ivf(out).nprobe = ivf(index).nprobe
    return out


def removed(index: Any, ids: np.ndarray):
    """A copy of ``index`` without ``ids`` (an ID selector)."""
    import faiss

    out = faiss.clone_index(index)
    out.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
    ivf(out).nprobe = ivf(index).nprobe
    return out


def quantiser_state(index: Any, vectors: np.ndarray, metric: str) -> dict[str, float]:
    """The coarse quantiser's list-size imbalance and the items' mean distance to their centroid."""
    inner = ivf(index)
    distances, _ = inner.quantizer.search(_unit(vectors, metric), 1)
    mean = float(np.mean(distances)) if metric == "l2" else float(np.mean(1.0 - distances))
    return {"imbalance": round(float(inner.invlists.imbalance_factor()), 4), "mean_distance": round(mean, 6)}


def advice(now: dict[str, float], at_build: dict[str, float]) -> str:
    """A sentence when the quantiser has drifted since training, else ``""``."""
    grown = []
    if now["imbalance"] > DRIFT * max(at_build["imbalance"], 1e-12):
        grown.append(f"list imbalance {at_build['imbalance']:.2f} -> {now['imbalance']:.2f}")
    if now["mean_distance"] > DRIFT * max(at_build["mean_distance"], 1e-12):
        grown.append(f"mean distance to centroid {at_build['mean_distance']:.4g} -> {now['mean_distance']:.4g}")
    if not grown:
        return ""
    return "retraining advisable (" + ", ".join(grown) + "): rebuild with cbmir index build"


def recall(index: Any, vectors: np.ndarray, ids: np.ndarray, metric: str, seed: int = 0) -> tuple[float, int]:
    """recall@k of the index against exact search, stored vectors as queries (``k`` = min(10, N))."""
    from cbmir.search.approximate import recall_at_k
    from cbmir.search.exact import search

    v = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(RECALL_K, len(v))
    rows = np.arange(len(v))
    if len(v) > RECALL_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(len(v), RECALL_SAMPLE, replace=False))
    _, truth = search(v, v[rows], k, metric)
    _, found = index.search(_unit(v[rows], metric), k)
    return recall_at_k(np.where(found >= 0, np.searchsorted(ids, found), -1), truth), k


def record(index: Any, vectors: np.ndarray, ids: np.ndarray, metric: str, at_build: dict | None) -> dict[str, Any]:
    """The manifest's ``approximate`` block for this generation."""
    state = quantiser_state(index, vectors, metric)
    value, k = recall(index, vectors, ids, metric)
    base = at_build or state
    return {
        "factory": None,  # filled by the caller
        "nprobe": int(ivf(index).nprobe),
        "k": k,
        "recall": round(value, 6),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quantiser": state,
        "at_build": base,
        "advice": advice(state, base),
    }


def rows_of(found: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """FAISS ids → rows of this generation (``-1`` stays ``-1``)."""
    return np.where(found >= 0, np.searchsorted(ids, found), -1).astype(np.int64)
