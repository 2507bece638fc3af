"""Memory-mapped splits (numpy only: decoding workers import this package without torch).

MedMNIST files and ingested own data share this one layout: ``<split>_images.npy`` (uint8,
memory-mapped) and ``<split>_labels.npy`` in one folder; :mod:`cbmir.data.loader` feeds them
to extraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbmir.errors import DataError

SPLITS = ("train", "val", "test")
#: The study's roles: the training split is the searchable database, the test split the queries.
ROLE_SPLIT = {"database": "train", "query": "test"}


@dataclass(frozen=True)
class Provenance:
    """Where the items of an ingested split came from (own data; MedMNIST splits have none)."""

    content_key: str  # changes with any file's bytes, label, group, split or decoding setting
    metadata: Path  # the split's table: one row per item, in item order (source path, label, group, hash, ...)
    sources: tuple[str, ...]  # source file of each item, as listed (relative to the root where it was)
    groups: np.ndarray  # group (patient/study) of each item, str
    class_names: dict[str, str]  # "0" -> "benign", as MedMNIST's INFO["label"]
    root: str = ""  # the folder the sources are relative to
    skipped: tuple[dict, ...] = field(default_factory=tuple)  # {"path", "reason"} of every file left out


@dataclass(frozen=True)
class Split:
    """One split: memory-mapped images and in-memory labels."""

    flag: str
    size: int
    split: str
    images: np.ndarray  # uint8, (N, H, W) | (N, H, W, 3) | (N, D, H, W)
    labels: np.ndarray  # int64, (N, 1) or (N, L) multi-label
    provenance: Provenance | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def multilabel(self) -> bool:
        return self.labels.shape[1] > 1


def load_split(folder: Path, flag: str, size: int, split: str) -> Split:
    try:
        images = np.load(folder / f"{split}_images.npy", mmap_mode="r", allow_pickle=False)
        labels = np.asarray(np.load(folder / f"{split}_labels.npy", allow_pickle=False), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder} holds an unreadable {split} split ({exc}); delete the folder to rebuild it") from exc
    if labels.ndim == 1:
        labels = labels[:, None]
    if images.dtype != np.uint8 or len(images) != len(labels):
        raise DataError(
            f"{folder}: {split} images must be uint8 with one label row each, "
            f"got {images.dtype} {images.shape} and labels {labels.shape}"
        )
    return Split(flag, size, split, images, labels)
