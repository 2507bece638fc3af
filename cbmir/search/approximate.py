"""Search beyond exact: FAISS index-factory strings, fp16 storage and PCA, and what they cost against exact search.

``search.index`` is a FAISS factory string (``Flat``, ``IVF4096,Flat``, ``HNSW32``,
``IVF4096,PQ64``, ``SQ8``, ``OPQ16,IVF1024,PQ16``…); ``search.nprobe`` / ``search.efSearch``
set its search-time parameters through ``faiss.ParameterSpace``; ``search.pca`` prefixes a
PCA to ``d'`` dimensions and ``store.dtype=float16`` keeps the raw vectors as fp16 (FAISS's
``SQfp16`` in place of ``Flat`` storage). Anything but exact fp32 ``Flat`` is an
*approximate* cell: it writes to its own protocol folder (:func:`cbmir.layout.search_id`)
and reports its recall against exact search and the change in every metric.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cbmir.errors import ConfigError
from cbmir.layout import search_id
from cbmir.search.exact import l2_normalize, search
from cbmir.search.placement import DEFAULT_MEMORY_FRACTION, place_index

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class SearchSpec:
    """The ``search`` config group plus ``store.dtype``: which index, how it is searched and trained."""

    index: str = "Flat"
    nprobe: int | None = None
    efSearch: int | None = None
    train_size: int | None = 100_000
    seed: int = 0
    pca: int | None = None
    dtype: str = "float32"
    recall_sample: int = 1000
    shard: bool = True
    gpu_memory_fraction: float = DEFAULT_MEMORY_FRACTION

    @property
    def exact(self) -> bool:
        return self.index == "Flat" and self.pca is None and self.dtype == "float32"

    @property
    def parameters(self) -> str:
        """The ``faiss.ParameterSpace`` string, with only the parameters this index type has."""
        params = []
        if self.nprobe is not None and "IVF" in self.index:
            params.append(f"nprobe={self.nprobe}")
        if self.efSearch is not None and "HNSW" in self.index:
            params.append(f"efSearch={self.efSearch}")
        return ",".join(params)

    def factory(self, metric: str) -> str:
        """The full factory string: optional PCA (and re-normalisation for cosine), then the index."""
        body = fp16_storage(self.index) if self.dtype == "float16" else self.index
        prefix = f"PCA{self.pca}," if self.pca else ""
        if self.pca and metric == "cosine":
            prefix += "L2norm,"
        return prefix + body


def search_spec(cfg: Any) -> SearchSpec:
    """The cell's :class:`SearchSpec`, validated: protocol ``paper`` accepts exact fp32 ``Flat`` only."""
    s = cfg.get("search") or {}
    spec = SearchSpec(
        index=str(s.get("index", "Flat")),
        nprobe=s.get("nprobe"),
        efSearch=s.get("efSearch"),
        train_size=s.get("train_size", 100_000),
        seed=int(s.get("seed", 0)),
        pca=s.get("pca"),
        dtype=str((cfg.get("store") or {}).get("dtype", "float32")),
        recall_sample=int(s.get("recall_sample", 1000)),
        shard=bool((s.get("gpu") or {}).get("shard", True)),
        gpu_memory_fraction=float((s.get("gpu") or {}).get("memory_fraction", DEFAULT_MEMORY_FRACTION)),
    )
    if spec.dtype not in DTYPES:
        raise ConfigError(f"store.dtype must be one of {DTYPES}, got {spec.dtype!r}")
    if spec.pca is not None and (not isinstance(spec.pca, int) or spec.pca < 1):
        raise ConfigError(f"search.pca must be null or a positive integer, got {spec.pca!r}")
    for name in ("nprobe", "efSearch", "train_size"):
        value = getattr(spec, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"search.{name} must be null or a positive integer, got {value!r}")
    if spec.dtype == "float16":
        fp16_storage(spec.index)  # raises for indexes that already encode their vectors
    protocol = cfg["protocol"]["name"]
    if protocol == "paper" and not spec.exact:
        raise ConfigError(
            f"protocol=paper searches exactly (search.index=Flat, search.pca=null, store.dtype=float32); "
            f"got {search_id(cfg)}. Use protocol=standard for approximate search or compression."
        )
    return spec


def fp16_storage(index: str) -> str:
    """``index`` with its raw-vector storage in fp16 (``Flat`` → ``SQfp16``); refused for encoded vectors."""
    parts = index.split(",")
    if parts[-1] == "Flat":
        parts[-1] = "SQfp16"
    elif re.fullmatch(r"HNSW\d+", parts[-1]):
        parts[-1] += ",SQfp16"
    else:
        raise ConfigError(
            f"store.dtype=float16 applies to indexes that store raw vectors (Flat, IVF…,Flat, HNSW…); "
            f"{index!r} encodes them already"
        )
    return ",".join(parts)


def make_index(dim: int, factory: str, metric: str = "l2"):
    """``faiss.index_factory`` without polysemous PQ training (slow, and only for Hamming filtering, unused here)."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"search.index: FAISS cannot build {factory!r} for {dim} dims: {exc}") from None
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False
    return index


def training_sample(database: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """A seeded sample of the database without replacement (all of it when ``size`` is null or larger)."""
    if size is None or size >= len(database):
        return database
    rows = np.sort(np.random.default_rng(seed).choice(len(database), size=size, replace=False))
    return database[rows]


@dataclass
class BuiltIndex:
    index: Any
    factory: str
    memory_bytes: int
    build_seconds: float
    placement: str


def build_search_index(database: np.ndarray, metric: str, spec: SearchSpec) -> BuiltIndex:
    """Train (on a seeded sample) and fill the index on the CPU, then place it on the GPUs that can hold it."""
    import faiss

    db = np.ascontiguousarray(database, dtype=np.float32)
    if metric == "cosine":
        db = l2_normalize(db)
    if spec.pca is not None and spec.pca >= db.shape[1]:
        raise ConfigError(f"search.pca={spec.pca} must be below the embedding width {db.shape[1]}")
    factory = spec.factory(metric)
    t0 = time.perf_counter()
    index = make_index(db.shape[1], factory, metric)
    if not index.is_trained:
        train = training_sample(db, spec.train_size, spec.seed)
        lists = re.search(r"IVF(\d+)", factory)
        if lists and len(train) < int(lists.group(1)):
            raise ConfigError(
                f"{factory} needs at least {lists.group(1)} training vectors, the database has {len(train)}; "
                "use fewer lists (e.g. IVF{√N})"
            )
        try:
            index.train(train)
        except RuntimeError as exc:
            raise ConfigError(f"training {factory} on {len(train)} vectors failed: {exc}") from None
    index.add(db)
    memory = int(faiss.serialize_index(index).nbytes)
    index, plan = place_index(index, memory, shard=spec.shard, memory_fraction=spec.gpu_memory_fraction)
    if spec.parameters:
        faiss.ParameterSpace().set_index_parameters(index, spec.parameters)
    return BuiltIndex(index, factory, memory, time.perf_counter() - t0, plan.kind)


def search_index(built: BuiltIndex, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == "cosine":
        q = l2_normalize(q)
    distances, indices = built.index.search(q, k)
    return distances.astype(np.float32), indices.astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top k that the approximate top k retrieved (order ignored)."""
    k = truth.shape[1]
    hits = sum(np.intersect1d(f[f >= 0], t).size for f, t in zip(found, truth))
    return hits / (k * len(truth))


def approximation_report(
    database: np.ndarray,
    queries: np.ndarray,
    neighbors: np.ndarray,
    k: int,
    metric: str,
    spec: SearchSpec,
    built: BuiltIndex,
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]],
) -> dict[str, Any]:
    """Recall@k against exact search and each metric's change, on a seeded sample of queries.

    ``score(query_rows, neighbors_of_those_rows)`` returns the cell's metrics for a subset of
    queries; both searches are scored on the same sample, so ``metric_delta`` is approximate
    minus exact. With ``recall_sample`` >= the number of queries the sample is every query.
    """
    n = len(queries)
    rows = np.arange(n)
    if spec.recall_sample < n:
        rows = np.sort(np.random.default_rng(spec.seed).choice(n, size=spec.recall_sample, replace=False))
    _, exact = search(database, np.asarray(queries)[rows], k, metric)
    approx_metrics, exact_metrics = score(rows, neighbors[rows]), score(rows, exact)
    return {
        "index": built.factory,
        "parameters": spec.parameters,
        "pca": spec.pca,
        "dtype": spec.dtype,
        f"recall@{k}": round(recall_at_k(neighbors[rows], exact), 6),
        "sample": int(len(rows)),
        "metric_delta": {name: approx_metrics[name] - exact_metrics[name] for name in approx_metrics},
        "memory_bytes": built.memory_bytes,
        "exact_memory_bytes": int(database.shape[0] * database.shape[1] * 4),
        "build_seconds": round(built.build_seconds, 3),
        "placement": built.placement,
    }
