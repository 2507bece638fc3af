"""RetrievalEvaluator: after extraction, search the database for every query, score it and write the result."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import Callback

from cbmir import __version__
from cbmir.metrics import relevance, retrieval_metrics
from cbmir.search import search
from cbmir.store import atomic_save_npy, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class CellResult:
    """Everything the evaluator needs to know about one cell; ``record`` fields go into result.json verbatim."""

    out_dir: Path
    embeddings: dict[str, Path]  # role -> .npy
    labels: dict[str, np.ndarray]  # role -> (N, L)
    k: int
    metric: str
    ties: str
    standard_metrics: bool
    record: dict[str, Any] = field(default_factory=dict)
    #: uint8 images by role, for the gallery (memory-mapped; only the shown ones are read); None = no gallery
    images: dict[str, np.ndarray] | None = None
    class_names: dict[str, str] | None = None
    search_backend: str = "auto"
    #: the index, compression and training settings (cbmir.ann.SearchSpec); None or exact = exact search
    search_spec: Any = None
    started: float = field(default_factory=time.perf_counter)


class RetrievalEvaluator(Callback):
    """Builds the exact index, computes the metrics, writes ``result.json`` (last, atomically) and logs.

    Triggered by ``on_predict_end`` on rank 0 once the writer has merged the embeddings,
    or called directly through :meth:`evaluate` when every embedding came from the cache.
    """

    def __init__(self, cell: CellResult, loggers: list | None = None):
        super().__init__()
        self.cell = cell
        self.loggers = loggers or []
        self.extraction_seconds = 0.0
        self._t0: float | None = None
        self.result: dict[str, Any] | None = None

    def on_predict_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._t0 is not None:
            self.extraction_seconds = time.perf_counter() - self._t0
        if trainer.is_global_zero:
            self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        c = self.cell
        database = np.load(c.embeddings["database"], mmap_mode="r")
        queries = np.load(c.embeddings["query"], mmap_mode="r")
        index_gb = database.nbytes / 1e9
        log.info(
            "searching %d queries in %d × %d database (%.2f GB, %s)", len(queries), *database.shape, index_gb, c.metric
        )
        approximate = c.search_spec is not None and not c.search_spec.exact
        if approximate:
            distances, neighbors, search_seconds, built = self.search_approximate(database, queries)
            index_gb = built.memory_bytes / 1e9
        else:
            t0 = time.perf_counter()
            distances, neighbors = search(database, queries, c.k, c.metric, backend=c.search_backend)
            search_seconds = time.perf_counter() - t0
        metrics = retrieval_metrics(
            c.labels["query"], c.labels["database"], neighbors, k=c.k, ties=c.ties, standard=c.standard_metrics
        )
        c.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(c.out_dir / "neighbors.npy", neighbors)
        atomic_save_npy(c.out_dir / "distances.npy", distances)
        gallery = self.render_gallery(neighbors) if c.images is not None else None
        result = {
            **c.record,
            "k": c.k,
            "metric": c.metric,
            "n_queries": int(len(queries)),
            "n_database": int(len(database)),
            "embedding_dim": int(database.shape[1]),
            "metrics": metrics,
            "embeddings": {role: str(Path(p).resolve()) for role, p in c.embeddings.items()},
            "seconds": {
                "extraction": round(self.extraction_seconds, 3),
                "search": round(search_seconds, 3),
                "total": round(time.perf_counter() - c.started, 3),
            },
            "index_gb": round(index_gb, 4),
            "queries_per_second": round(len(queries) / max(search_seconds, 1e-9), 1),
            "cbmir_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if approximate:
            result["approximate"] = self.compare_with_exact(database, queries, neighbors, built)
        atomic_write_json(c.out_dir / "result.json", result)
        for logger in self.loggers:
            logger.log_metrics({**metrics, **{f"seconds/{k}": v for k, v in result["seconds"].items()}}, step=0)
            if gallery is not None and hasattr(logger, "log_image"):
                logger.log_image(key="gallery", images=[str(gallery)], step=0)
        self.result = result
        summary = "  ".join(f"{name} {value:.2f}" for name, value in metrics.items())
        log.info("%s: %s", c.out_dir, summary)
        print(f"[cbmir] {c.record.get('model')} · {c.record.get('dataset')} · {c.record.get('size')}: {summary}")
        return result

    def search_approximate(self, database: np.ndarray, queries: np.ndarray):
        """``(distances, neighbors, search seconds, BuiltIndex)`` with the cell's index (build time excluded)."""
        from cbmir.ann import build_index, search_index

        c = self.cell
        built = build_index(database, c.metric, c.search_spec)
        t0 = time.perf_counter()
        distances, neighbors = search_index(built, queries, c.k, c.metric)
        return distances, neighbors, time.perf_counter() - t0, built

    def compare_with_exact(self, database: np.ndarray, queries: np.ndarray, neighbors: np.ndarray, built) -> dict:
        """result.json's ``approximate``: recall@k against exact search and each metric's change, on a query sample."""
        from cbmir.ann import approximation_report

        c = self.cell

        def score(rows: np.ndarray, found: np.ndarray) -> dict[str, float]:
            return retrieval_metrics(
                c.labels["query"][rows], c.labels["database"], found, k=c.k, ties=c.ties, standard=c.standard_metrics
            )

        return approximation_report(database, queries, neighbors, c.k, c.metric, c.search_spec, built, score)

    def render_gallery(self, neighbors: np.ndarray) -> Path:
        """``gallery.png``: a fixed, seeded sample of queries with their neighbours, framed by relevance."""
        from cbmir.gallery import render_gallery

        c = self.cell
        rel = relevance(c.labels["query"], c.labels["database"], neighbors)
        r = c.record
        title = f"{r.get('model')} · {r.get('dataset')} · {r.get('size')} px · {r.get('protocol')}"
        return render_gallery(
            c.out_dir / "gallery.png",
            c.images["query"],
            c.images["database"],
            neighbors,
            c.labels["query"],
            c.labels["database"],
            rel,
            class_names=c.class_names,
            title=title,
        )
