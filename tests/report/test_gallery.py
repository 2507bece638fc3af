"""Retrieval galleries: a fixed query sample, frames that follow relevance, 2D/RGB/3D images, a readable PNG."""

from __future__ import annotations

import numpy as np
import pytest

from cbmir.metrics.retrieval import relevance
from cbmir.report.gallery import (
    IRRELEVANT,
    QUERY,
    RELEVANT,
    build_gallery,
    class_text,
    display_image,
    render_gallery,
    select_queries,
)


def test_select_queries_is_fixed_grouped_and_fair():
    labels = np.repeat(np.arange(4), [5, 1, 7, 3])[:, None]
    picked = select_queries(labels, per_class=2, seed=0)
    assert np.array_equal(picked, select_queries(labels, per_class=2, seed=0))  # the same sample every time
    assert not np.array_equal(picked, select_queries(labels, per_class=2, seed=1))
    assert labels[picked, 0].tolist() == [0, 0, 1, 2, 2, 3, 3]  # grouped by class; class 1 has one query only
    # a cut keeps one query of every class before a second of any
    cut = select_queries(labels, per_class=2, seed=0, max_rows=5)
    assert sorted(set(labels[cut, 0])) == [0, 1, 2, 3] and len(cut) == 5
    assert set(cut) <= set(picked)
    # multi-label: label vectors are the classes, most frequent first
    multi = np.array([[1, 0], [1, 0], [1, 0], [0, 0], [1, 1]])
    assert select_queries(multi, per_class=1, seed=0).tolist()[0] in (0, 1, 2)


def test_class_text_and_images():
    names = {"0": "normal", "1": "tumour"}
    assert class_text(np.array([1]), names) == "1 tumour"
    assert class_text(np.array([2]), ["a", "b", "c"]) == "2 c"
    assert class_text(np.array([3])) == "3"
    assert class_text(np.array([1, 0, 1]), ["a", "b", "c"]) == "a+c" and class_text(np.array([0, 0])) == "none"
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert display_image(gray).shape == (4, 4, 3) and (display_image(gray)[..., 1] == gray).all()
    volume = np.zeros((5, 4, 4), dtype=np.uint8)
    volume[2] = 77  # the middle slice of D = 5 is index 2
    assert (display_image(volume, volume=True) == 77).all()


def _data(kind: str, n_q: int = 6, n_db: int = 10, side: int = 16):
    rng = np.random.default_rng(0)
    q_labels = (np.arange(n_q) % 2)[:, None]
    db_labels = (np.arange(n_db) % 2)[:, None]
    shape = {"gray": (side, side), "rgb": (side, side, 3), "3d": (side, side, side)}[kind]
    q_images = rng.integers(0, 256, (n_q, *shape), dtype=np.uint8)
    db_images = rng.integers(0, 256, (n_db, *shape), dtype=np.uint8)
    neighbors = np.array([[i % n_db, (i + 1) % n_db, (i + 2) % n_db] for i in range(n_q)])
    return q_images, db_images, neighbors, q_labels, db_labels


@pytest.mark.parametrize("kind", ["gray", "rgb", "3d"])
def test_frames_follow_relevance(kind):
    q_images, db_images, neighbors, q_labels, db_labels = _data(kind)
    rel = relevance(q_labels, db_labels, neighbors)
    g = build_gallery(q_images, db_images, neighbors, q_labels, db_labels, rel, per_class=2, tile=16, border=3)
    assert len(g.queries) == 4
    seen = set()
    for r, qi in enumerate(g.queries):
        top, left, bottom, right = g.boxes[(r, 0)]
        assert tuple(g.canvas[top + 1, left + 1]) == QUERY
        for j in range(neighbors.shape[1]):
            top, left, bottom, right = g.boxes[(r, j + 1)]
            expected = RELEVANT if rel[qi, j] else IRRELEVANT
            seen.add(expected)
            # every side of the frame, and not the inside of the tile
            for y, x in (
                (top, left),
                (top + 1, (left + right) // 2),
                (bottom - 1, right - 1),
                ((top + bottom) // 2, left + 2),
            ):
                assert tuple(g.canvas[y, x]) == expected
            assert bottom - top == 16 + 2 * 3
    assert seen == {RELEVANT, IRRELEVANT}
    # the tile shows the neighbour's image as stored (tile = image size: no resampling), a volume's middle slice
    top, left, _, _ = g.boxes[(0, 1)]
    shown = g.canvas[top + 3 : top + 3 + 16, left + 3 : left + 3 + 16]
    assert np.array_equal(shown, display_image(db_images[neighbors[g.queries[0], 0]], volume=kind == "3d"))
    if kind == "3d":
        assert np.array_equal(shown[..., 0], db_images[neighbors[g.queries[0], 0]][8])
    # relevance defaults to the study's rule
    again = build_gallery(q_images, db_images, neighbors, q_labels, db_labels, None, per_class=2, tile=16, border=3)
    assert np.array_equal(again.canvas, g.canvas)


def test_rendered_png_keeps_the_frames(tmp_path):
    import matplotlib.image as mpimg

    q_images, db_images, neighbors, q_labels, db_labels = _data("rgb", side=28)
    rel = np.zeros(neighbors.shape, dtype=bool)
    rel[:, 0] = True  # rank 1 relevant, the rest not
    path = render_gallery(
        tmp_path / "cell" / "gallery.png",
        q_images,
        db_images,
        neighbors,
        q_labels,
        db_labels,
        rel,
        class_names={"0": "benign", "1": "malignant"},
        per_class=1,
        title="uni · breastmnist · 28",
    )
    g = build_gallery(
        q_images,
        db_images,
        neighbors,
        q_labels,
        db_labels,
        rel,
        class_names={"0": "benign", "1": "malignant"},
        per_class=1,
        title="uni · breastmnist · 28",
    )
    image = (mpimg.imread(path)[..., :3] * 255).round().astype(np.uint8)
    assert image.shape == g.canvas.shape  # pixel for pixel
    for col, colour in ((1, RELEVANT), (2, IRRELEVANT), (3, IRRELEVANT)):
        top, left, bottom, right = g.boxes[(0, col)]
        assert tuple(image[(top + bottom) // 2, left + 1]) == colour
    assert any(t == "1 malignant" for _, _, t, _ in g.texts) and any("query" in t for _, _, t, _ in g.texts)


def test_mismatched_relevance_is_an_error():
    q_images, db_images, neighbors, q_labels, db_labels = _data("gray")
    with pytest.raises(ValueError, match="same shape"):
        build_gallery(q_images, db_images, neighbors, q_labels, db_labels, np.zeros((2, 2), bool))


@pytest.mark.parametrize("side", [28, 100])
def test_any_image_size_fills_the_tile(side):
    q_images, db_images, neighbors, q_labels, db_labels = _data("gray", side=side)
    neighbors[0, 2] = -1  # a padded search result: its slot stays empty
    g = build_gallery(
        q_images,
        db_images,
        neighbors,
        q_labels,
        db_labels,
        np.ones(neighbors.shape, bool),
        queries=[0, 1],
        tile=64,
        border=2,
    )
    assert list(g.queries) == [0, 1] and (0, 3) not in g.boxes and (1, 3) in g.boxes
    top, left, bottom, right = g.boxes[(1, 1)]
    assert (bottom - top, right - left) == (68, 68)
    flat = np.full((1, side, side), 90, dtype=np.uint8)
    g = build_gallery(flat, flat, np.zeros((1, 1), int), [[0]], [[0]], queries=[0], tile=64, border=2)
    top, left, _, _ = g.boxes[(0, 1)]
    assert (g.canvas[top + 2 : top + 66, left + 2 : left + 66] == 90).all()
