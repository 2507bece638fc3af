"""A search index on disk: one folder, every file checksummed in its ``manifest.json`` (no torch).

The folder holds what a query needs and nothing that could run code on load: the FAISS index
(``faiss.index``, exact), the embeddings it was built from (``embeddings.npy``), the items'
labels (``labels.npy``), their metadata (``items.csv``: row, split, position, source, label,
group), small RGB thumbnails (``thumbs.npy``), optionally the items' pixels as the model saw
them (``images.npy``), the pixels of one item that a reopened backbone must embed again to the
stored vector (``probe.npy``), and the manifest (model, weights identity, preprocessing, metric,
versions, sha256 of every file). Every array is read with ``allow_pickle=False``; a missing or
changed file is reported by name before anything is searched.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.errors import DataError
from cbmir.safety.files import atomic_write_json
from cbmir.safety.integrity import file_digest

FORMAT = "cbmir-index/1"
MANIFEST = "manifest.json"
FAISS_FILE = "faiss.index"
EMBEDDINGS = "embeddings.npy"
LABELS = "labels.npy"
ITEMS = "items.csv"
THUMBS = "thumbs.npy"
IMAGES = "images.npy"
PROBE = "probe.npy"
ITEM_COLUMNS = ("row", "split", "position", "source", "label", "label_name", "group")


class BrokenIndexError(DataError):
    """An index folder that is missing, incomplete, tampered with or of another format."""


class IndexMismatchError(DataError):
    """A query backbone that is not the one the index was built with."""


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def write_items(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=ITEM_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_items(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def finish(partial: Path, target: Path, manifest: dict[str, Any]) -> Path:
    """Checksum every file of ``partial``, write the manifest, and move the folder to ``target`` whole."""
    files = sorted(p for p in partial.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        **manifest,
        "format": FORMAT,
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
    }
    atomic_write_json(partial / MANIFEST, manifest)
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, target)
    return target


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BrokenIndexError(
            f"{folder} is not a cbmir index: {MANIFEST} is missing (build one with python -m cbmir.index)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BrokenIndexError(f"{path} cannot be read ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BrokenIndexError(f"{path}: format {manifest.get('format')!r}, this cbmir reads {FORMAT!r}")
    return manifest


def verify(folder: Path, manifest: dict[str, Any]) -> None:
    """Every listed file present, of its size and sha256; no listed file missing. Names every problem."""
    folder = Path(folder)
    problems = []
    for name, expected in manifest["files"].items():
        path = folder / name
        if Path(name).name != name:
            problems.append(f"{name}: not a plain file name")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{name}: changed ({path.stat().st_size} bytes, the manifest says {expected['bytes']})")
        elif sha256_file(path) != expected["sha256"]:
            problems.append(f"{name}: changed (sha256 differs from the manifest)")
    for required in (FAISS_FILE, EMBEDDINGS, LABELS, ITEMS, THUMBS, PROBE):
        if required not in manifest["files"]:
            problems.append(f"{required}: not listed in the manifest")
    if problems:
        raise BrokenIndexError(f"index {folder} failed its checks; rebuild it:\n  " + "\n  ".join(problems))


def load_array(path: Path, *, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


@dataclass
class IndexFolder:
    """An opened, verified index: the FAISS index, embeddings and pixels memory-mapped, items in memory."""

    folder: Path
    manifest: dict[str, Any]
    faiss_index: Any
    embeddings: np.ndarray  # float32 (N, d), memory-mapped
    labels: np.ndarray  # int64 (N, L)
    items: list[dict[str, str]]
    thumbs: np.ndarray  # uint8 (N, t, t, 3), memory-mapped
    images: np.ndarray | None  # the items' pixels, memory-mapped; None when the build left them out
    probe: np.ndarray  # pixels of item manifest["probe_row"]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def class_names(self) -> dict[str, str] | None:
        return self.manifest.get("class_names")


def open_index(folder: str | Path, *, check: bool = True) -> IndexFolder:
    """Open an index folder; with ``check`` (the default) every file's sha256 is verified first."""
    import faiss

    folder = Path(folder).expanduser().resolve()
    manifest = read_manifest(folder)
    if check:
        verify(folder, manifest)
    faiss_index = faiss.read_index(str(folder / FAISS_FILE))
    embeddings = load_array(folder / EMBEDDINGS)
    labels = load_array(folder / LABELS, mmap=False)
    items = read_items(folder / ITEMS)
    thumbs = load_array(folder / THUMBS)
    images = load_array(folder / IMAGES) if IMAGES in manifest["files"] else None
    n, dim = manifest["n_items"], manifest["embedding_dim"]
    sizes = {
        "faiss.index": faiss_index.ntotal,
        EMBEDDINGS: len(embeddings),
        LABELS: len(labels),
        ITEMS: len(items),
        THUMBS: len(thumbs),
    }
    if images is not None:
        sizes[IMAGES] = len(images)
    wrong = [f"{name}: {count} items" for name, count in sizes.items() if count != n]
    if faiss_index.d != dim or embeddings.shape[1] != dim:
        wrong.append(f"width {faiss_index.d}/{embeddings.shape[1]}, the manifest says {dim}")
    if wrong:
        raise BrokenIndexError(f"index {folder} is inconsistent (manifest: {n} items):\n  " + "\n  ".join(wrong))
    return IndexFolder(
        folder, manifest, faiss_index, embeddings, labels, items, thumbs, images, load_array(folder / PROBE, mmap=False)
    )
