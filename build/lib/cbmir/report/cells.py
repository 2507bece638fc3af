"""The report's record of one result: :class:`Cell`, read from a ``result.json`` dict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The fields that identify a cell (with ``metrics``, what makes a dict a cbmir result).
IDENTITY: tuple[str, ...] = ("protocol", "dataset", "size", "model")
#: Groups flattened under another prefix (``versions.torch`` -> ``version_torch``).
_PREFIX = {"versions": "version", "seconds": "seconds", "cached": "cached"}
#: Left out of the flat record: the resolved config and the embedding paths are not results; intervals
#: and per-class means have fields of their own.
_SKIPPED = ("config", "embeddings", "intervals", "per_class")


@dataclass
class Cell:
    """One result: its identity, its metrics (percent) and everything else flattened for the CSV."""

    protocol: str
    dataset: str
    size: int
    model: str
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: the cell's own stored intervals, ``metric -> (low, high)`` in percent (result.json ``intervals``)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: per-class means, ``metric -> class -> percent`` (result.json ``per_class``)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.protocol, self.dataset, self.size, self.model)


def cell_from_result(result: dict[str, Any], path: Path | None = None) -> Cell:
    """Flatten a ``result.json`` dict: nested groups become prefixed columns; config/embeddings are left out."""
    missing = [k for k in (*IDENTITY, "metrics") if k not in result]
    if missing:
        raise ValueError(f"not a cbmir result (no {', '.join(missing)})")
    info: dict[str, Any] = {}
    for name, value in result.items():
        if name in (*IDENTITY, "metrics", *_SKIPPED):
            continue
        if isinstance(value, dict):
            prefix = _PREFIX.get(name, name)
            info.update({f"{prefix}_{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, list):
            info[name] = value
    metrics = {str(k): float(v) for k, v in result["metrics"].items() if v is not None}
    intervals = {
        str(k): (float(v["low"]), float(v["high"]))
        for k, v in (result.get("intervals") or {}).items()
        if isinstance(v, dict) and v.get("low") is not None and v.get("high") is not None
    }
    per_class = {
        str(metric): {str(c): float(v) for c, v in classes.items() if v is not None}
        for metric, classes in (result.get("per_class") or {}).items()
        if isinstance(classes, dict)
    }
    identity = (str(result["protocol"]), str(result["dataset"]), int(result["size"]), str(result["model"]))
    return Cell(*identity, metrics, info, path, intervals, per_class)
