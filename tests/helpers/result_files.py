"""Synthetic result folders for the report's tests: ``result.json`` files as a cell writes them, with known numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

FIVE = ("mAP@5", "mMV@5", "ACC@1", "ACC@3", "ACC@5")


def write_result(
    root: Path, protocol: str, dataset: str, size: int, model: str, metrics: dict[str, float], **extra
) -> Path:
    """A result.json as a cell writes it (the fields the report reads, plus config noise it must ignore)."""
    folder = root / "results" / protocol / dataset / str(size) / model
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "protocol": protocol,
        "dataset": dataset,
        "size": size,
        "model": model,
        "k": 5,
        "metric": "cosine" if protocol == "standard" else "l2",
        "n_queries": 10,
        "n_database": 40,
        "embedding_dim": 96,
        "metrics": metrics,
        "embeddings": {"database": "/x/db.npy", "query": "/x/q.npy"},
        "seconds": {"extraction": 1.5, "search": 0.25, "total": 2.0},
        "index_gb": 0.0001,
        "unit_norm": False,
        "cached": {"database": False, "query": True},
        "precision": "32-true",
        "versions": {"cbmir": "0.1.0", "torch": "2.5.0"},
        "config": {"model": {"name": model}},
        "cbmir_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
        **extra,
    }
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
