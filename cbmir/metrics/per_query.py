"""``per_query.npz``: every metric's score for every query of a cell, beside neighbors.npy.

Written with :func:`numpy.savez` (no pickle; load with ``allow_pickle=False``). Arrays:

* ``query_index`` (Q,) int64: the query's row in the query split (MedMNIST's test split);
* ``label`` (Q, L) int64: its label (L = 1, or 14 for multi-label ChestMNIST);
* one (Q,) float64 array per metric of result.json's ``metrics`` that is a per-query mean,
  named like it (``mAP@5``, ``ACC@1``, ``MAP@R``, …), in percent: its mean *is* the headline.
  The ``_macro`` variants are not per-query; :func:`cbmir.metrics.retrieval.summarize` rebuilds them
  from these arrays and ``label``.
* side arrays whose name holds a ``:`` (the text protocols: ``prompt:MAP@R`` (C, P), one score per class and
  prompt in percent; ``pred:class`` (Q,), zero-shot's top class), stored verbatim; :func:`read_per_query`
  leaves them out of the scores.

Results written before this file existed can be rescored with :func:`recompute_per_query`
from neighbors.npy and the labels (and, for MAP@R / R-precision, the cached embeddings).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cbmir.metrics.retrieval import per_query_scores
from cbmir.safety.files import writing

FILE_NAME = "per_query.npz"
_RESERVED = ("query_index", "label")


def write_per_query(
    out_dir: Path,
    scores: Mapping[str, np.ndarray],
    query_labels: np.ndarray,
    *,
    extra: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Atomically write ``per_query.npz`` (scores given in [0, 1], stored in percent; ``extra`` verbatim)."""
    labels = np.asarray(query_labels).reshape(len(query_labels), -1).astype(np.int64)
    arrays = {name: 100.0 * np.asarray(v, dtype=np.float64) for name, v in scores.items()}
    if bad := [name for name in extra or {} if ":" not in name]:
        raise ValueError(f"side arrays {bad} need a ':' in their name")
    arrays |= {name: np.asarray(v) for name, v in (extra or {}).items()}
    if clash := set(arrays) & set(_RESERVED):
        raise ValueError(f"metric names {sorted(clash)} collide with the file's own arrays")
    path = Path(out_dir) / FILE_NAME
    tmp = path.with_name(path.name + ".tmp.npz")
    with writing(path, labels.nbytes + sum(a.nbytes for a in arrays.values()) + 8 * len(labels) + 4096, tmp):
        np.savez(tmp, query_index=np.arange(len(labels), dtype=np.int64), label=labels, **arrays)
        os.replace(tmp, path)
    return path


def read_per_query(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``(scores in percent by metric, query_index, label)`` from a per_query.npz (or its cell folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    with np.load(path, allow_pickle=False) as f:
        scores = {name: f[name] for name in f.files if name not in _RESERVED and ":" not in name}
        return scores, f["query_index"], f["label"]


def recompute_per_query(
    cell_dir: Path, query_labels: np.ndarray, database_labels: np.ndarray, *, with_embeddings: bool = True
) -> dict[str, np.ndarray]:
    """Per-query scores (percent) of an existing cell, from its neighbors.npy, result.json and the labels.

    Uses the k, vote tie rule and metric set the cell ran with. MAP@R and R-precision
    need the embeddings result.json points to; they are added when those files still exist.
    """
    cell_dir = Path(cell_dir)
    result = json.loads((cell_dir / "result.json").read_text())
    protocol = result.get("config", {}).get("protocol", {})
    standard = bool(protocol.get("standard_metrics", False))
    scores = per_query_scores(
        query_labels,
        database_labels,
        np.load(cell_dir / "neighbors.npy", allow_pickle=False),
        k=int(result["k"]),
        ties=protocol.get("vote_ties", "optimistic"),
        standard=standard,
    )
    paths = {role: Path(p) for role, p in result.get("embeddings", {}).items()}
    if standard and with_embeddings and paths and all(p.exists() for p in paths.values()):
        from cbmir.metrics.at_r import metrics_at_r

        db, q = (np.load(paths[role], mmap_mode="r", allow_pickle=False) for role in ("database", "query"))
        scores |= metrics_at_r(db, q, database_labels, query_labels, result["metric"])
    return {name: 100.0 * v for name, v in scores.items()}
