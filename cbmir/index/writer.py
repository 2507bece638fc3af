"""Writing one generation of an index: the arrays in bounded memory, items, probe, FAISS index, manifest, switch.

The build, ``index add`` and ``index remove`` all end here (:func:`write_generation`), so every
generation has the same files, checksums and manifest whatever made it. Rows are streamed from
their sources in chunks through :class:`Rows` (a selection of rows, an optional per-block
transform such as thumbnailing, and rows zeroed where pixels are withheld).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.index.files import EMBEDDINGS, FAISS_FILE, IMAGES, ITEMS, JOINT, LABELS, PROBE, THUMBS, seal, write_items
from cbmir.index.generations import commit, next_partial
from cbmir.index.privacy import Privacy
from cbmir.safety import faults

CHUNK = 1024
#: Seed of the synthetic probe image (noise: no patient's pixels are kept to check a reopened model).
PROBE_SEED = 20240607


class Rows:
    """Rows of an array-like (a memory map, a :class:`cbmir.index.files.RowFile`, an array), read in chunks."""

    def __init__(
        self,
        source: Any,
        rows: np.ndarray | None = None,
        *,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        zero: np.ndarray | None = None,
    ):
        self.source, self.transform = source, transform
        self.rows = np.arange(len(source)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.zero = np.zeros(len(self.rows), dtype=bool) if zero is None else np.asarray(zero, dtype=bool)

    def __len__(self) -> int:
        return len(self.rows)

    def block(self, start: int, stop: int) -> np.ndarray:
        rows = self.rows[start:stop]
        contiguous = len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1)
        data = np.asarray(self.source[int(rows[0]) : int(rows[-1]) + 1] if contiguous else self.source[rows])
        if self.transform is not None:
            data = self.transform(data)
        zero = self.zero[start:stop]
        if zero.any():
            data = data.copy()
            data[zero] = 0
        return data


def copy_rows(target: Path, parts: list[Rows], dtype) -> None:
    """Concatenate ``parts`` into one ``.npy`` in bounded memory."""
    first = parts[0].block(0, 1) if len(parts[0]) else next(p.block(0, 1) for p in parts if len(p))
    shape = (sum(len(p) for p in parts), *first.shape[1:])
    out = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=shape)
    row = 0
    for part in parts:
        for start in range(0, len(part), CHUNK):
            block = part.block(start, min(start + CHUNK, len(part)))
            out[row : row + len(block)] = block
            row += len(block)
    out.flush()
    del out


def thumbnailer(side: int, volume: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Images (a block) → RGB ``side``² thumbnails (a volume's middle slice), as the galleries resize their tiles."""

    def transform(block: np.ndarray) -> np.ndarray:
        from cbmir.report.gallery import display_image, resize_tile

        shown = np.stack([display_image(img, volume=volume) for img in block])
        b, h, w, _ = shown.shape
        # one resize for the whole block: images side by side along the channel axis
        tiles = resize_tile(shown.transpose(1, 2, 0, 3).reshape(h, w, b * 3), side)
        return tiles.reshape(side, side, b, 3).transpose(2, 0, 1, 3)

    return transform


def item_row(
    split: str, position: int, source: str, labels: np.ndarray, class_names, group: str, privacy: Privacy, withheld: str
) -> dict[str, Any]:
    """One ``items.csv`` row; source and group as the index's privacy says (build and add share this)."""
    from cbmir.report.gallery import class_text

    labels = np.asarray(labels).reshape(-1)
    return {
        "split": split,
        "position": position,
        "source": privacy.source(source),
        "label": ";".join(str(int(v)) for v in (labels if len(labels) == 1 else np.flatnonzero(labels))),
        "label_name": class_text(labels, class_names),
        "group": privacy.group(group),
        "withheld": withheld,
    }


def synthetic_probe(shape: tuple[int, ...]) -> np.ndarray:
    """Seeded noise shaped as an item: what a reopened model must embed to the stored probe vector."""
    return np.random.default_rng(PROBE_SEED).integers(0, 256, size=shape, dtype=np.uint8)


@dataclass
class Content:
    """Everything a generation holds; arrays as lists of :class:`Rows` so nothing is loaded whole."""

    embeddings: list[Rows]
    labels: np.ndarray
    items: list[dict[str, Any]]
    thumbs: list[Rows]
    images: list[Rows] | None
    probe: np.ndarray
    manifest: dict[str, Any]
    faiss_index: Callable[[np.ndarray], Any]  # embeddings (memory-mapped) → the FAISS index to write
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # more arrays by file name (an IVF index's ids)
    describe: Callable[[Any, np.ndarray], dict] | None = None  # (FAISS index, embeddings) → manifest entries
    joint: list[Rows] | None = None  # joint image-text vectors (vision-language models' text queries)


def write_generation(root: Path, content: Content, keep: int) -> Path:
    """Write ``content`` as the next generation of ``root``, switch to it, prune; returns the generation folder."""
    import faiss

    partial = next_partial(root)
    copy_rows(partial / EMBEDDINGS, content.embeddings, np.float32)
    np.save(partial / LABELS, np.ascontiguousarray(content.labels, dtype=np.int64))
    rows = [{**item, "row": i} for i, item in enumerate(content.items)]
    write_items(partial / ITEMS, rows)
    faults.hit("index_partial", str(partial))  # a generation half-written
    copy_rows(partial / THUMBS, content.thumbs, np.uint8)
    if content.images is not None:
        copy_rows(partial / IMAGES, content.images, np.uint8)
    np.save(partial / PROBE, content.probe)
    if content.joint is not None:
        copy_rows(partial / JOINT, content.joint, np.float32)
    for name, array in content.extra.items():
        np.save(partial / name, array)
    embeddings = np.load(partial / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    index = content.faiss_index(embeddings)
    faiss.write_index(index, str(partial / FAISS_FILE))
    described = content.describe(index, np.asarray(embeddings)) if content.describe else {}
    del embeddings
    manifest = {**content.manifest, **described, "n_items": len(rows), "probe_row": None}
    seal(partial, manifest)
    return commit(root, partial, keep)
