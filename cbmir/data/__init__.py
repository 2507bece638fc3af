"""Datasets: MedMNIST files and own images (folders, CSV/Parquet manifests, DICOM, NIfTI), one layout for both.

:func:`open_split` is the one dispatch point: ``dataset.kind`` (``medmnist``, the default, or
``folder`` / ``manifest``) chooses the source, and every source ends as the same memory-mapped
:class:`Split` that extraction, search, metrics and galleries read. :func:`dataset_facts` says
what is known before any file is opened (sizes, database size, class names).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cbmir.data.datasets import ROLE_SPLIT, SPLITS, Provenance, Split, load_split
from cbmir.data.medmnist import (
    ensure_file,
    file_name,
    md5sum,
    medmnist_info,
    open_medmnist_split,
    source_of,
    split_arrays,
)
from cbmir.data.own import OWN_KINDS, open_own_splits, own_config
from cbmir.data.pixels import DecodeLimits
from cbmir.data.volumes import resize_volumes, resized_volumes
from cbmir.errors import ConfigError

KINDS = ("medmnist", *OWN_KINDS)
#: Names that need torch, imported on first use, so that decoding workers and torch-free tools stay light.
_LOADER_NAMES = ("ImageArrayDataset", "collate_batched")

__all__ = [
    "KINDS",
    "ROLE_SPLIT",
    "SPLITS",
    "DatasetFacts",
    "ImageArrayDataset",
    "Provenance",
    "Split",
    "collate_batched",
    "dataset_facts",
    "dataset_kind",
    "ensure_file",
    "file_name",
    "load_split",
    "md5sum",
    "medmnist_info",
    "open_split",
    "open_splits",
    "resize_volumes",
    "resized_volumes",
    "source_of",
    "split_arrays",
]


def __getattr__(name: str):
    if name in _LOADER_NAMES:
        from cbmir.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dataset_kind(cfg_dataset) -> str:
    kind = cfg_dataset.get("kind", "medmnist") or "medmnist"
    if kind not in KINDS:
        raise ConfigError(f"dataset.kind must be one of {KINDS}, got {kind!r}")
    return kind


@dataclass(frozen=True)
class DatasetFacts:
    """What a dataset config says before ingestion; ``None`` = not known yet (own data) or any (sizes)."""

    kind: str
    sizes: tuple[int, ...] | None
    n_database: int | None
    class_names: dict[str, str] | None


def dataset_facts(cfg_dataset) -> DatasetFacts:
    """Sizes, database size and class names: MedMNIST's from its INFO; own data's after a check of its config."""
    kind = dataset_kind(cfg_dataset)
    sizes = cfg_dataset.get("sizes")
    sizes = tuple(int(s) for s in sizes) if sizes is not None else None
    if kind == "medmnist":
        info = medmnist_info(cfg_dataset.flag)
        return DatasetFacts(kind, sizes, int(info["n_samples"][ROLE_SPLIT["database"]]), info.get("label"))
    own_config(cfg_dataset)
    return DatasetFacts(kind, sizes, None, None)


def open_splits(
    cfg_dataset,
    size: int,
    data_dir: str | Path,
    splits: Iterable[str],
    *,
    volume_side: int | None = None,
    limits: DecodeLimits | None = None,
) -> dict[str, Split]:
    """Map the requested splits of the configured dataset (downloading or ingesting it once first).

    ``volume_side`` (3D only) resamples every volume to ``volume_side``³ once and caches that too; ``limits``
    (the ``decode`` config node's caps) bound what own files may claim.
    """
    if dataset_kind(cfg_dataset) == "medmnist":
        return {s: open_medmnist_split(cfg_dataset, size, data_dir, s, volume_side=volume_side) for s in splits}
    return open_own_splits(cfg_dataset, size, data_dir, splits, volume_side=volume_side, limits=limits)


def open_split(
    cfg_dataset,
    size: int,
    data_dir: str | Path,
    split: str,
    *,
    volume_side: int | None = None,
    limits: DecodeLimits | None = None,
) -> Split:
    """One split of the configured dataset (see :func:`open_splits`)."""
    return open_splits(cfg_dataset, size, data_dir, [split], volume_side=volume_side, limits=limits)[split]
