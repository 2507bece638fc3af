"""A cell's per-query scores, from its stored files: ``per_query.npz``, or rescored from ``neighbors.npy``.

Intervals and paired tests need every query's score. New cells store them (``per_query.npz``,
with the query labels). A cell written before that file existed is rescored from its
``neighbors.npy`` and the labels of its MedMNIST split, found through the cell's resolved config
(``paths.data_dir``, ``dataset.flag``, ``size``): the split's ``*_labels.npy`` if the data was
already unpacked, else the one member of the ``.npz`` (never the pixels, never torch). Without
any of these the cell has no per-query scores and its interval shows as missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.layout import medmnist_file_name
from cbmir.metrics.per_query import FILE_NAME, read_per_query, recompute_per_query
from cbmir.report.cells import Cell

log = logging.getLogger(__name__)

#: The study's roles and the MedMNIST splits they read (as :data:`cbmir.data.ROLE_SPLIT`, without torch).
_ROLE_SPLIT = {"database": "train", "query": "test"}


@dataclass
class QueryScores:
    """Every query's score by metric (percent, ``(Q,)`` each) and the queries' labels ``(Q, L)``."""

    scores: dict[str, np.ndarray]
    labels: np.ndarray
    source: str  # "per_query.npz" or "neighbors.npy"

    def same_queries(self, other: QueryScores) -> bool:
        """Scored on the same queries (same count and labels), so the two can be compared query by query."""
        return self.labels.shape == other.labels.shape and bool(np.array_equal(self.labels, other.labels))


def load_query_scores(cell: Cell) -> QueryScores | None:
    """The cell's per-query scores: stored, else rescored from neighbors.npy; None (with a log line) when neither."""
    if cell.path is None:
        return None
    stored = cell.path / FILE_NAME
    try:
        if stored.is_file():
            scores, _, labels = read_per_query(stored)
            return QueryScores(scores, labels, FILE_NAME)
        if not (cell.path / "neighbors.npy").is_file():
            log.info("%s: no per-query scores and no neighbors.npy; its intervals are missing", cell.path)
            return None
        result = json.loads((cell.path / "result.json").read_text())
        labels = split_labels(result)
        if labels is None:
            log.info("%s: no per_query.npz and its MedMNIST labels are not on disk; intervals missing", cell.path)
            return None
        scores = recompute_per_query(cell.path, labels["query"], labels["database"], with_embeddings=False)
        return QueryScores(scores, labels["query"].reshape(len(labels["query"]), -1), "neighbors.npy")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: per-query scores unreadable (%s); its intervals are missing", cell.path, exc)
        return None


def split_labels(result: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """``{"database", "query"}`` labels of the cell's MedMNIST file, from its config; None when not on disk."""
    config = result.get("config") or {}
    data_dir = (config.get("paths") or {}).get("data_dir")
    flag = (config.get("dataset") or {}).get("flag")
    if not data_dir or not flag:
        return None
    npz = Path(data_dir) / medmnist_file_name(flag, int(result["size"]))
    unpacked = npz.with_suffix("")  # cbmir.data.split_arrays' folder of one .npy per array
    out = {}
    for role, split in _ROLE_SPLIT.items():
        member = unpacked / f"{split}_labels.npy"
        if member.is_file():
            out[role] = np.load(member, allow_pickle=False)
        elif npz.is_file():
            with np.load(npz, allow_pickle=False) as f:
                out[role] = f[f"{split}_labels"]
        else:
            return None
    return {role: np.asarray(v, dtype=np.int64).reshape(len(v), -1) for role, v in out.items()}
