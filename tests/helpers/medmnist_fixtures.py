"""Tiny MedMNIST-format files with class structure, so retrieval has signal even with random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbmir.data import file_name


def class_images(
    labels: np.ndarray, size: int, *, rgb: bool, rng: np.random.Generator, depth: int | None = None
) -> np.ndarray:
    """Each class is a stripe orientation/frequency plus a tint; noise keeps the items distinct."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for label in labels:
        c = int(label)
        angle = np.pi * c / 4.0
        freq = 2.0 + 1.5 * c
        base = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
        img = 40 + 160 * base + rng.normal(0, 20, base.shape)
        if depth is not None:
            img = np.stack([img * (0.7 + 0.3 * np.cos(np.pi * z / depth + c)) for z in range(depth)])
        if rgb:
            tint = np.array([1.0, 0.85 + 0.05 * c, 0.7 + 0.1 * (c % 3)])
            img = img[..., None] * tint
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def write_medmnist(
    root: Path,
    flag: str,
    size: int = 28,
    *,
    n: dict[str, int] | None = None,
    n_classes: int = 3,
    rgb: bool = False,
    multilabel: int = 0,
    depth: int | None = None,
    seed: int = 0,
) -> Path:
    """Write ``{flag}[_{size}].npz`` with the official keys; returns its path."""
    n = n or {"train": 24, "val": 6, "test": 12}
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in n.items():
        labels = np.arange(count) % n_classes
        rng.shuffle(labels)
        arrays[f"{split}_images"] = class_images(labels, size, rgb=rgb, rng=rng, depth=depth)
        if multilabel:
            vec = np.zeros((count, multilabel), dtype=np.uint8)
            for i, c in enumerate(labels):
                if c > 0:
                    vec[i, (c - 1) % multilabel] = 1
            arrays[f"{split}_labels"] = vec
        else:
            arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    path = root / file_name(flag, size)
    np.savez_compressed(path, **arrays)
    return path
