"""The cell's evaluation: search the database for every query, score it, bootstrap it and write the result files.

Pure of Lightning: :class:`Evaluation` takes the embeddings' files and the cell's facts (:class:`CellResult`) and
writes ``result.json`` (last, atomically), ``per_query.npz``, neighbours, distances and the gallery. The Lightning
callback (:mod:`cbmir.cell.callback`) only times the extraction and calls it on rank 0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cbmir import __version__
from cbmir.cell.store import atomic_save_npy, atomic_write_json
from cbmir.errors import NonFiniteEmbeddingError
from cbmir.logs import get_logger
from cbmir.metrics.diagnostics import hubness, leakage_audit
from cbmir.metrics.per_query import write_per_query
from cbmir.metrics.retrieval import class_membership, per_class, per_query_scores, relevance, summarize
from cbmir.safety import faults
from cbmir.search.exact import search, search_excluding_group
from cbmir.stats.bootstrap import StatsSettings
from cbmir.stats.paired import metric_intervals

log = get_logger(__name__)


def nonfinite_rows(array: np.ndarray, chunk: int = 65536) -> int:
    """Rows with a NaN or Inf, counted in bounded-memory chunks (a memory-mapped file is read once)."""
    return sum(int((~np.isfinite(array[i : i + chunk])).any(axis=1).sum()) for i in range(0, len(array), chunk))


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
    #: uint8 images by role, for the gallery and the leakage audit (memory-mapped; only the used ones are read)
    images: dict[str, np.ndarray] | None = None
    gallery: bool = True
    stats: StatsSettings = field(default_factory=StatsSettings)
    class_names: dict[str, str] | None = None
    search_backend: str = "auto"
    #: group (patient) of each item by role; with ``exclude_same_group`` a query's own group is never its neighbour
    groups: dict[str, np.ndarray] | None = None
    exclude_same_group: bool = False
    #: source file of each item by role (own data), shown under the gallery's tiles
    names: dict[str, Sequence[str]] | None = None
    #: the index, compression and training settings (cbmir.search.approximate.SearchSpec); None or exact = exact search
    search_spec: Any = None
    started: float = field(default_factory=time.perf_counter)


def interval_bounds(intervals: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``<metric>_ci_low`` / ``<metric>_ci_high`` (percent) of result.json's intervals, for the loggers."""
    out = {}
    for metric, bounds in intervals.items():
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = float(bounds["low"]), float(bounds["high"])
    return out


class Evaluation:
    """Builds the index (exact, or the cell's approximate one), computes the metrics, writes the result, logs."""

    def __init__(self, cell: CellResult, loggers: list | None = None):
        self.cell = cell
        self.loggers = loggers or []
        self.extraction_seconds = 0.0
        self.result: dict[str, Any] | None = None
        self.scores: dict[str, np.ndarray] = {}

    def evaluate(self) -> dict[str, Any]:
        c = self.cell
        database, queries = self.embeddings()
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
            if c.exclude_same_group:
                distances, neighbors = search_excluding_group(
                    database, queries, c.k, c.metric, c.groups["database"], c.groups["query"], backend=c.search_backend
                )
            else:
                distances, neighbors = search(database, queries, c.k, c.metric, backend=c.search_backend)
            search_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics, statistics = self.score(database, queries, neighbors)
        statistics_seconds = time.perf_counter() - t0
        c.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(c.out_dir / "neighbors.npy", neighbors)
        atomic_save_npy(c.out_dir / "distances.npy", distances)
        write_per_query(c.out_dir, self.scores, c.labels["query"])
        gallery = self.render_gallery(neighbors) if c.images is not None and c.gallery else None
        faults.hit("before_result")
        fields = {
            "metric": c.metric,
            "n_queries": int(len(queries)),
            "n_database": int(len(database)),
            "embedding_dim": int(database.shape[1]),
            "metrics": metrics,
            **statistics,
            "index_gb": round(index_gb, 4),
            "queries_per_second": round(len(queries) / max(search_seconds, 1e-9), 1),
        }
        if approximate:
            fields["approximate"] = self.compare_with_exact(database, queries, neighbors, built)
        return self.publish(fields, {"search": search_seconds, "statistics": statistics_seconds}, gallery)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The database and query embeddings, memory-mapped, refused with the count when any row is not finite."""
        c = self.cell
        database = np.load(c.embeddings["database"], mmap_mode="r", allow_pickle=False)
        queries = np.load(c.embeddings["query"], mmap_mode="r", allow_pickle=False)
        for role, array in (("database", database), ("query", queries)):
            if bad := nonfinite_rows(array):
                raise NonFiniteEmbeddingError(f"{bad} of {len(array)} {role} embeddings hold NaN or Inf", bad)
        return database, queries

    def publish(self, fields: dict[str, Any], seconds: dict[str, float], gallery: Path | None = None) -> dict:
        """result.json: the cell's record and ``fields`` with the embeddings, timings and version every protocol
        writes; written atomically and last, then logged to every logger."""
        c = self.cell
        result = {
            **c.record,
            "k": c.k,
            **fields,
            "embeddings": {role: str(Path(p).resolve()) for role, p in c.embeddings.items()},
            "seconds": {
                "extraction": round(self.extraction_seconds, 3),
                **{name: round(value, 3) for name, value in seconds.items()},
                "total": round(time.perf_counter() - c.started, 3),
            },
            "cbmir_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(c.out_dir / "result.json", result)
        metrics = result["metrics"]
        logged = {**metrics, **interval_bounds(result["intervals"])}
        for logger in self.loggers:
            logger.log_metrics({**logged, **{f"seconds/{k}": v for k, v in result["seconds"].items()}}, step=0)
            if gallery is not None and hasattr(logger, "log_image"):
                logger.log_image(key="gallery", images=[str(gallery)], step=0)
        self.result = result
        summary = "  ".join(f"{name} {value:.2f}" for name, value in metrics.items())
        what = c.record.get("protocol") if fields.get("text_protocol") else c.record.get("size")
        log.info("%s · %s · %s: %s", c.record.get("model"), c.record.get("dataset"), what, summary)
        return result

    def score(self, database: np.ndarray, queries: np.ndarray, neighbors: np.ndarray) -> tuple[dict, dict]:
        """Headline metrics (percent) and the result's ``intervals``, ``per_class`` and ``diagnostics``.

        Per-query scores are kept in ``self.scores`` (for per_query.npz): every headline is their mean,
        its interval a bootstrap over them; the standard protocol adds MAP@R / R-precision from the
        full ranking and every metric's macro average over classes.
        """
        c = self.cell
        q_labels, db_labels = c.labels["query"], c.labels["database"]
        scores = per_query_scores(q_labels, db_labels, neighbors, k=c.k, ties=c.ties, standard=c.standard_metrics)
        if c.standard_metrics:
            from cbmir.metrics.at_r import metrics_at_r

            scores |= metrics_at_r(database, queries, db_labels, q_labels, c.metric)
        membership, class_names = class_membership(q_labels)
        macro = membership if c.standard_metrics else None
        self.scores = scores
        statistics = {
            "intervals": metric_intervals(scores, c.stats, macro),
            "per_class": per_class(scores, membership, class_names),
            "diagnostics": {
                "hubness": hubness(neighbors, len(database), top=c.stats.top_hubs),
                "leakage": leakage_audit(
                    database, queries, neighbors, scores, tolerance=c.stats.leak_tolerance, images=c.images
                ),
            },
        }
        return summarize(scores, macro), statistics

    def search_approximate(self, database: np.ndarray, queries: np.ndarray):
        """``(distances, neighbors, search seconds, BuiltIndex)`` with the cell's index (build time excluded)."""
        from cbmir.search.approximate import build_search_index, search_index

        c = self.cell
        built = build_search_index(database, c.metric, c.search_spec)
        t0 = time.perf_counter()
        distances, neighbors = search_index(built, queries, c.k, c.metric)
        return distances, neighbors, time.perf_counter() - t0, built

    def compare_with_exact(self, database: np.ndarray, queries: np.ndarray, neighbors: np.ndarray, built) -> dict:
        """result.json's ``approximate``: recall@k against exact search and each metric's change, on a query sample."""
        from cbmir.search.approximate import approximation_report

        c = self.cell

        def score(rows: np.ndarray, found: np.ndarray) -> dict[str, float]:
            # the k-neighbour metrics only: MAP@R and R-precision rank the exact embeddings whatever the index
            q_labels = c.labels["query"][rows]
            scores = per_query_scores(
                q_labels, c.labels["database"], found, k=c.k, ties=c.ties, standard=c.standard_metrics
            )
            return summarize(scores, class_membership(q_labels)[0] if c.standard_metrics else None)

        return approximation_report(database, queries, neighbors, c.k, c.metric, c.search_spec, built, score)

    def render_gallery(self, neighbors: np.ndarray) -> Path:
        """``gallery.png``: a fixed, seeded sample of queries with their neighbours, framed by relevance."""
        from cbmir.report.gallery import render_gallery

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
            names=c.names,
        )
