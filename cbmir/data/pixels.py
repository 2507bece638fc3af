"""What every decoder shares: the bad-file error, the decoded result, the size caps and the 8-bit mapping.

The caps exist because an image file is untrusted: a 7.8 KB RLE DICOM can claim 65535 × 65535 pixels
and a 875 KB PNG can inflate to 900 Mpx. Every reader compares the size its header claims with
:class:`DecodeLimits` before it decodes or inflates a single pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbmir.errors import ConfigError


class BadFile(Exception):
    """A file that cannot become an item: unreadable, corrupt, unsupported, too large or of the wrong kind."""


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8 (H, W) | (H, W, 3) | (D, H, W)
    shape: tuple[int, ...]  # the source's own shape (before any resizing)
    spacing: tuple[float, ...] | None = None  # voxel size per axis of ``pixels`` (volumes)


@dataclass(frozen=True)
class DecodeLimits:
    """Caps on what a file may claim, checked from its header before any pixel is decoded (``decode.*`` keys)."""

    max_pixels: int = 100_000_000  # 2D: rows × columns (× frames for a multi-frame 2D read)
    max_voxels: int = 512 * 1024**2  # 3D: the volume's voxels

    @classmethod
    def from_config(cls, node) -> DecodeLimits:
        """The ``decode`` config node (``None`` = defaults); a ConfigError names the key that is wrong."""
        if node is None:
            return cls()
        values = {}
        for key in ("max_pixels", "max_voxels"):
            value = node.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"decode.{key} must be a positive whole number of pixels, got {value!r}")
            values[key] = value
        return cls(**values)


def _amount(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} "


def check_size(name: str, claimed: tuple[int, ...], limits: DecodeLimits, *, volume: bool, detail: str = "") -> None:
    """Refuse a file whose header claims more pixels (2D) or voxels (3D) than the configured cap."""
    count = 1
    for n in claimed:
        count *= int(n)
    cap, key, unit = (
        (limits.max_voxels, "decode.max_voxels", "voxels") if volume else (limits.max_pixels, "decode.max_pixels", "px")
    )
    if count > cap:
        dims = " × ".join(str(int(n)) for n in claimed)
        extra = f", {detail}" if detail else ""
        raise BadFile(
            f"{name} claims {dims} = {_amount(count)}{unit}{extra}, over {key}={cap}: refused before decoding "
            f"(raise {key} if such files are expected)"
        )


def to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map ``[low, high]`` linearly onto 0-255 (clipped, rounded); the data's own min-max where not given."""
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if low is None or high is None:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    x = np.nan_to_num(x, nan=low, posinf=high, neginf=low)
    if high <= low:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.rint(np.clip((x - low) * (255.0 / (high - low)), 0, 255)).astype(np.uint8)


def window_bounds(window: tuple[float, float] | None) -> tuple[float | None, float | None]:
    if window is None:
        return None, None
    center, width = window
    return center - width / 2, center + width / 2


def reason(exc: BaseException) -> str:
    """A library exception's text without object reprs or empty strings: the cause in words a user can read."""
    import re

    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", str(exc)).strip()
    text = re.sub(r"\s*Use force=True[^.]*\.?", "", text).strip()
    return text or type(exc).__name__
