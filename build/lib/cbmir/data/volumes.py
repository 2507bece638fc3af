"""The study's 3D resampling: every volume to ``side``³ once, cached beside its split (torch imported on use)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cbmir.safety.locks import exclusive, lock_path


def resize_volumes(volumes: np.ndarray, side: int) -> np.ndarray:
    """The study's 3D resampling to ``side``³, clipped to 0–255 before the cast to uint8.

    First axis: cubic spline zoom (scipy, order 3); then every slice: bicubic 2D resize
    (torch, a = -0.75, as OpenCV's INTER_CUBIC). The study's code cast to uint8 without
    clipping, so spline overshoot wrapped around (256.3 → 0, -1.5 → 255); cbmir clips
    first. Values are then truncated, like the study's ``astype(uint8)``.
    """
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import zoom

    x = np.asarray(volumes, dtype=np.float32)
    if x.shape[1] != side:
        x = zoom(x, (1, side / x.shape[1], 1, 1), order=3)
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.shape[-2:] != (side, side):
        n, d = t.shape[:2]
        t = F.interpolate(t.reshape(n * d, 1, *t.shape[-2:]), size=(side, side), mode="bicubic", align_corners=False)
        t = t.reshape(n, d, side, side)
    return t.clamp_(0, 255).numpy().astype(np.uint8)


def resized_volumes(folder: Path, split: str, images: np.ndarray, side: int, chunk: int = 64) -> np.ndarray:
    """``resize_volumes`` of a whole split, done once in chunks and memory-mapped from ``<split>_images_<side>.npy``."""
    path = folder / f"{split}_images_{side}.npy"
    if not path.exists():
        with exclusive(lock_path(path)):  # concurrent cells resample once; the others wait and map the result
            if not path.exists():
                _resample_split(path, images, side, chunk)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _resample_split(path: Path, images: np.ndarray, side: int, chunk: int) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), side, side, side))
    for start in range(0, len(images), chunk):
        out[start : start + chunk] = resize_volumes(images[start : start + chunk], side)
    out.flush()
    del out
    os.replace(tmp, path)
