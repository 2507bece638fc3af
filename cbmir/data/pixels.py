"""What every decoder shares: the bad-file error, the decoded result, the size caps and the 8-bit mapping.

The caps exist because an image file is untrusted: a 7.8 KB RLE DICOM can claim 65535 × 65535 pixels
and a 875 KB PNG can inflate to 900 Mpx. Every reader compares the size its header claims with
:class:`DecodeLimits` before it decodes or inflates a single pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbmir.errors import ConfigError

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


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


def to_uint8(
    values: np.ndarray, low: float | None = None, high: float | None = None, *, overwrite: bool = False
) -> np.ndarray:
    """Map ``[low, high]`` linearly onto 0-255 (clipped, rounded); the data's own min-max where not given.

    One float64 working copy, changed in place: a 100 Mpx image needs 0.8 GB here, not four times that;
    ``overwrite=True`` works in ``values`` itself when it is float64 already (a caller's own scratch array).
    """
    owned = overwrite and isinstance(values, np.ndarray) and values.dtype == np.float64
    x = values if owned else np.array(values, dtype=np.float64, copy=True)
    if low is None or high is None:
        finite = np.isfinite(x)
        if finite.all():
            low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        else:
            kept = x[finite]
            low, high = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 0.0)
        del finite
    if high <= low:
        return np.zeros(x.shape, dtype=np.uint8)
    np.nan_to_num(x, copy=False, nan=low, posinf=high, neginf=low)
    x -= low
    x *= 255.0 / (high - low)
    np.clip(x, 0, 255, out=x)
    np.rint(x, out=x)
    return x.astype(np.uint8)


def window_bounds(window: tuple[float, float] | None) -> tuple[float | None, float | None]:
    if window is None:
        return None, None
    center, width = window
    return center - width / 2, center + width / 2


def reason(exc: BaseException, path: object = None, name: str = "the file") -> str:
    """A library exception's text in words a user can read: no object reprs, no (temporary) path, never empty."""
    import re

    text = str(exc)
    if path is not None:
        text = text.replace(str(path), name)
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", text)
    text = re.sub(r"\s*Use force=True[^.]*\.?", "", text).strip()
    return text or type(exc).__name__


def file_format(path: Path | str) -> str | None:
    """``pillow`` | ``dicom`` | ``nifti`` by suffix; a suffix-less file is DICOM when it says ``DICM``; else None."""
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PILLOW_SUFFIXES):
        return "pillow"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if "." not in Path(name).name:
        try:
            with open(path, "rb") as fh:
                return "dicom" if fh.read(132)[128:132] == b"DICM" else None
        except OSError:
            return None
    return None
