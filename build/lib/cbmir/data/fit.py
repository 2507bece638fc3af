"""Fit an image or volume of any shape to the cell's square (cube) size: pad, crop or stretch.

``pad`` (the default) scales the longer side to ``size`` and centres the result on black,
so nothing is cut and the aspect is kept; ``crop`` scales the shorter side to ``size`` and
cuts the centre; ``stretch`` resizes each axis to ``size``. Images go through Pillow's
bicubic resampling (antialiased when shrinking); volumes through a trilinear zoom on their
physical extent (voxel spacing), so an anisotropic scan keeps its proportions. An item that
already has the target shape is returned unchanged, pixel for pixel.
"""

from __future__ import annotations

import numpy as np

FITS = ("pad", "crop", "stretch")


def _target(shape: tuple[int, ...], extent: np.ndarray, size: int, fit: str) -> tuple[int, ...]:
    if fit == "stretch":
        return (size,) * len(shape)
    scale = size / (extent.max() if fit == "pad" else extent.min())
    target = [max(1, round(float(e * scale))) for e in extent]
    return tuple(min(size, t) if fit == "pad" else max(size, t) for t in target)


def centre(x: np.ndarray, size: int, axes: int) -> np.ndarray:
    """Centre the first ``axes`` axes of ``x`` in a ``size``-sided black canvas (padding or cropping each)."""
    out = np.zeros((size,) * axes + x.shape[axes:], dtype=x.dtype)
    src, dst = [], []
    for n in x.shape[:axes]:
        if n >= size:
            start = (n - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            start = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = x[tuple(src)]
    return out


def fit_image(pixels: np.ndarray, size: int, fit: str = "pad") -> np.ndarray:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` to ``(size, size[, 3])``."""
    from PIL import Image

    h, w = pixels.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(pixels)
    th, tw = _target((h, w), np.array([h, w], dtype=np.float64), size, fit)
    resized = np.array(Image.fromarray(np.ascontiguousarray(pixels)).resize((tw, th), Image.Resampling.BICUBIC))
    return centre(resized, size, 2)


def fit_volume(voxels: np.ndarray, size: int, fit: str = "pad", spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """uint8 ``(D, H, W)`` with voxel ``spacing`` to ``(size, size, size)`` (trilinear, rounded)."""
    from scipy.ndimage import zoom

    shape = voxels.shape
    if shape == (size,) * 3 and (fit == "stretch" or spacing is None or len(set(spacing)) == 1):
        return np.ascontiguousarray(voxels)
    extent = np.array(shape, dtype=np.float64) * np.array(spacing or (1.0, 1.0, 1.0), dtype=np.float64)
    target = _target(shape, extent, size, fit)
    factors = [t / n for t, n in zip(target, shape)]
    resized = zoom(voxels.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
    resized = np.rint(np.clip(resized, 0, 255)).astype(np.uint8)
    return centre(resized, size, 3)
