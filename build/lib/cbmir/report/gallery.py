"""Retrieval galleries: a fixed sample of queries (rows) with their top-k neighbours (columns).

What a number cannot show: which classes get confused and whether the neighbours look alike.
Each tile is captioned with its class; a neighbour's frame is green when it is relevant to its
query and red when not; the query's own label sits at the left. 3D volumes show their middle
slice (index D // 2 of ``(D, H, W)``).

The query sample depends only on the query labels and the seed, so every model of a dataset
shows the same queries and galleries can be compared side by side. The picture is built as a
numpy canvas first (:func:`build_gallery`, pure and testable pixel by pixel); only the text is
drawn by matplotlib when saving (:func:`save_gallery`), outside the tiles and their frames.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RELEVANT = (0, 160, 0)
IRRELEVANT = (215, 0, 0)
QUERY = (40, 90, 200)
BACKGROUND = (255, 255, 255)

ClassNames = Mapping[Any, str] | Sequence[str] | None


@dataclass
class Gallery:
    """The canvas and where everything is on it (pixels, row-major: y down, x right)."""

    canvas: np.ndarray  # (H, W, 3) uint8
    queries: np.ndarray  # query indices, one per row
    #: (row, col) -> (top, left, bottom, right) of the framed tile, bottom/right exclusive; col 0 = query, 1.. = rank
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)
    #: (x, y, text, matplotlib text kwargs)
    texts: list[tuple[float, float, str, dict[str, Any]]] = field(default_factory=list)
    border: int = 3


def select_queries(
    query_labels: np.ndarray, per_class: int = 2, seed: int = 0, max_rows: int | None = None
) -> np.ndarray:
    """A fixed, seeded sample: up to ``per_class`` queries of each class, grouped by class.

    Classes are label values in order (multi-label: label vectors, most frequent first). When
    ``max_rows`` cuts the sample, every class gets its first query before any gets a second.
    """
    labels = np.asarray(query_labels)
    labels = labels.reshape(len(labels), -1)
    if len(labels) == 0 or per_class < 1:
        return np.zeros(0, dtype=np.int64)
    _, inverse, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.arange(len(counts)) if labels.shape[1] == 1 else np.argsort(-counts, kind="stable")
    rng = np.random.default_rng(seed)
    picks = []  # (round, class position, index)
    for position, c in enumerate(order):
        members = np.flatnonzero(inverse == c)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        picks += [(j, position, int(i)) for j, i in enumerate(sorted(chosen))]
    picks.sort()
    if max_rows is not None:
        picks = picks[:max_rows]
    return np.array([i for _, _, i in sorted(picks, key=lambda p: (p[1], p[0]))], dtype=np.int64)


def display_image(image: np.ndarray, *, volume: bool = False) -> np.ndarray:
    """One stored image as ``(H, W, 3)`` uint8: gray repeated, a volume's middle slice along its first axis."""
    img = np.asarray(image)
    if volume:
        img = img[img.shape[0] // 2]
    if img.dtype != np.uint8:
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"cannot display an image of shape {np.asarray(image).shape} (volume={volume})")
    return img


def is_volume_array(images: np.ndarray) -> bool:
    """MedMNIST layouts: (N,H,W) gray, (N,H,W,3) RGB, (N,D,H,W) 3D."""
    shape = np.shape(images)
    return len(shape) == 5 or (len(shape) == 4 and shape[-1] not in (1, 3))


def _resize(img: np.ndarray, tile: int) -> np.ndarray:
    """Square ``(tile, tile, 3)``: box average when shrinking, pixel blocks when enlarging (small images stay crisp)."""
    out = img.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        starts = (np.arange(tile) * n) // tile
        if n >= tile:
            counts = np.diff(np.append(starts, n)).reshape([-1 if a == axis else 1 for a in range(3)])
            out = np.add.reduceat(out, starts, axis=axis) / counts
        else:
            out = np.take(out, starts, axis=axis)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


#: The tiles' resize, public for the search index's thumbnails (one resize, so thumbnails look like gallery tiles).
resize_tile = _resize


def class_text(label: np.ndarray, class_names: ClassNames = None) -> str:
    """``"3 eosinophil"`` for a class, the positive classes joined by ``+`` for a multi-label vector."""
    label = np.asarray(label).reshape(-1)

    def name(c: int) -> str:
        if class_names is None:
            return ""
        if isinstance(class_names, Mapping):
            found = class_names.get(c, class_names.get(str(c)))
        else:
            found = class_names[c] if 0 <= c < len(class_names) else None
        return str(found) if found is not None else ""

    if label.size == 1:
        c = int(label[0])
        return f"{c} {name(c)}".strip()
    positives = [int(i) for i in np.flatnonzero(label)]
    if not positives:
        return "none"
    return "+".join(name(c) or str(c) for c in positives)


def _shorten(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


def _shorten_left(text: str, chars: int) -> str:
    """Keep the end (a file name's distinctive part and suffix)."""
    return text if len(text) <= chars else "…" + text[-max(chars - 1, 1) :]


def build_gallery(
    query_images: np.ndarray,
    database_images: np.ndarray,
    neighbors: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    relevance: np.ndarray | None = None,
    *,
    class_names: ClassNames = None,
    per_class: int = 2,
    seed: int = 0,
    max_rows: int | None = 16,
    max_cols: int = 10,
    queries: Sequence[int] | None = None,
    tile: int = 64,
    border: int = 3,
    title: str | None = None,
    names: Mapping[str, Sequence[str]] | None = None,
) -> Gallery:
    """The gallery as a canvas; only the chosen images are read (memory maps of a large database stay on disk).

    ``names`` (``{"query": [...], "database": [...]}``, own data's source files) puts each tile's file
    name under it, so the images found can be opened.
    """
    neighbors = np.asarray(neighbors)
    q_labels = np.asarray(query_labels).reshape(len(query_labels), -1)
    db_labels = np.asarray(database_labels).reshape(len(database_labels), -1)
    if relevance is None:
        from cbmir.metrics.retrieval import relevance as relevance_of

        relevance = relevance_of(q_labels, db_labels, neighbors)
    relevance = np.asarray(relevance, dtype=bool)
    if relevance.shape != neighbors.shape:
        raise ValueError(f"relevance {relevance.shape} and neighbors {neighbors.shape} must have the same shape")
    rows = (
        np.asarray(queries, dtype=np.int64)
        if queries is not None
        else select_queries(q_labels, per_class, seed, max_rows)
    )
    k = min(neighbors.shape[1], max_cols)
    q_volume, db_volume = is_volume_array(query_images), is_volume_array(database_images)

    margin, gap, spacing = 8, 14, 6
    label_width, header, caption, footer = 118, 18, 14, 16
    title_height = 20 if title else 0
    cell = tile + 2 * border
    width = margin + label_width + cell + gap + k * cell + (k - 1) * spacing + margin
    name_line = 12 if names else 0
    row_height = caption + cell + name_line + spacing
    height = margin + title_height + header + len(rows) * row_height - spacing + footer + margin
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    gallery = Gallery(canvas, rows, border=border)
    text = gallery.texts
    small = {"fontsize": 7, "ha": "center", "va": "center", "color": "0.15"}
    chars = max(int(cell / 5.6), 4)

    x_query = margin + label_width
    x_ranks = [x_query + cell + gap + j * (cell + spacing) for j in range(k)]
    y0 = margin + title_height
    if title:
        text.append(
            (
                width / 2,
                margin + title_height / 2 - 2,
                title,
                {"fontsize": 9, "ha": "center", "va": "center", "weight": "bold"},
            )
        )
    text.append(
        (
            margin,
            height - margin - footer / 2 + 2,
            "frame: blue = query, green = relevant, red = not relevant",
            {**small, "ha": "left"},
        )
    )
    text.append((x_query + cell / 2, y0 + header / 2, "query", {**small, "weight": "bold"}))
    for j, x in enumerate(x_ranks):
        text.append((x + cell / 2, y0 + header / 2, f"#{j + 1}", {**small, "weight": "bold"}))

    def place(
        row: int, col: int, x: int, y: int, image: np.ndarray, colour: tuple[int, int, int], label: str, name: str = ""
    ) -> None:
        canvas[y : y + cell, x : x + cell] = colour
        canvas[y + border : y + border + tile, x + border : x + border + tile] = _resize(image, tile)
        gallery.boxes[(row, col)] = (y, x, y + cell, x + cell)
        text.append((x + cell / 2, y - caption / 2, _shorten(label, chars), small))
        if name:
            text.append(
                (x + cell / 2, y + cell + name_line / 2, _shorten_left(name, chars + 2), {**small, "fontsize": 6})
            )

    def file_of(role: str, index: int) -> str:
        return str(names[role][index]) if names and role in names else ""

    for r, qi in enumerate(rows):
        y = y0 + header + r * row_height + caption
        q_text = class_text(q_labels[qi], class_names)
        wrapped = textwrap.fill(q_text, width=20, max_lines=2, placeholder="…")
        text.append((margin, y + cell / 2, f"query {int(qi)}\n{wrapped}", {**small, "ha": "left", "fontsize": 7.5}))
        q_image = display_image(query_images[int(qi)], volume=q_volume)
        place(r, 0, x_query, y, q_image, QUERY, q_text, file_of("query", int(qi)))
        for j in range(k):
            di = int(neighbors[qi, j])
            if di < 0:  # a search that found fewer than k results pads with -1: leave the slot empty
                continue
            colour = RELEVANT if relevance[qi, j] else IRRELEVANT
            place(
                r,
                j + 1,
                x_ranks[j],
                y,
                display_image(database_images[di], volume=db_volume),
                colour,
                class_text(db_labels[di], class_names),
                file_of("database", di),
            )
    return gallery


def save_gallery(gallery: Gallery, path: str | Path) -> Path:
    """Write the canvas pixel for pixel (PNG of the canvas's size) with the captions drawn on its blank strips."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = gallery.canvas.shape[:2]
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(gallery.canvas, interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    for x, y, text, style in gallery.texts:
        ax.text(x, y, text, **style)
    fig.savefig(path, dpi=dpi)
    return path


def render_gallery(
    path: str | Path,
    query_images: np.ndarray,
    database_images: np.ndarray,
    neighbors: np.ndarray,
    query_labels: np.ndarray,
    database_labels: np.ndarray,
    relevance: np.ndarray | None = None,
    **kwargs: Any,
) -> Path:
    """Build and save a gallery (``gallery.png`` of a cell); keyword arguments as :func:`build_gallery`."""
    gallery = build_gallery(
        query_images, database_images, neighbors, query_labels, database_labels, relevance, **kwargs
    )
    return save_gallery(gallery, path)
