"""Own image files to uint8 arrays: ONE bounded entry point, :func:`decode`, for ingestion, query and serve.

Each format goes through the library made for it (:mod:`cbmir.data.raster`: PNG/JPEG/TIFF/BMP with Pillow;
:mod:`cbmir.data.dicom`: pydicom; :mod:`cbmir.data.nifti`: nibabel; :mod:`cbmir.data.series`: a folder that
holds one DICOM series). Every reader checks the size its header claims against :class:`DecodeLimits`
(``decode.max_pixels``, ``decode.max_voxels``) before it decodes or inflates a pixel, and every failure is a
:class:`BadFile` with a reason in cbmir's words: no input raises anything else.

Every decoder returns a :class:`Decoded` (uint8 pixels + the source's shape and voxel spacing); :func:`decode`
then fits it to the cell's size (:mod:`cbmir.data.fit`). These functions run in worker processes, so they
import neither torch nor the rest of cbmir's data pipeline.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbmir.data.dicom import read_dicom
from cbmir.data.fit import fit_image, fit_volume
from cbmir.data.nifti import read_nifti
from cbmir.data.pixels import (
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    PILLOW_SUFFIXES,
    BadFile,
    Decoded,
    DecodeLimits,
    file_format,
    reason,
    to_uint8,
    window_bounds,
)
from cbmir.data.raster import read_pillow
from cbmir.data.series import folder_digest, is_series_folder, read_series

__all__ = [
    "BadFile",
    "Decoded",
    "DecodeLimits",
    "DecodeSpec",
    "decode",
    "decode_chunk",
    "is_series_folder",
    "read_series",
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PILLOW_SUFFIXES",
    "file_format",
    "read_dicom",
    "read_nifti",
    "read_pillow",
    "to_uint8",
    "window_bounds",
]

SUPPORTED = "not a supported image (PNG, JPEG, TIFF, BMP, DICOM, NIfTI)"


@dataclass(frozen=True)
class DecodeSpec:
    """Everything that decides the pixels of an ingested item (part of the ingested content key)."""

    size: int
    dims: int = 2  # 2 = images, 3 = volumes
    fit: str = "pad"  # pad | crop | stretch
    channels: str = "auto"  # auto | 1 | 3 (2D only; volumes are gray)
    window: tuple[float, float] | None = None  # (center, width) in the source's units


def hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: Path | str) -> str:
    """blake2b (128-bit) of the file's bytes: the content half of the ingestion key."""
    with open(path, "rb") as fh:
        return hash_bytes(fh.read())


def conform_channels(pixels: np.ndarray, channels: str) -> np.ndarray:
    """``auto``: RGB stays RGB unless its three channels are equal; ``1``: luma (PIL's L); ``3``: gray repeated."""
    if pixels.ndim == 3 and channels in ("auto", "1"):
        if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all():
            return np.ascontiguousarray(pixels[..., 0])
        if channels == "1":
            from PIL import Image

            return np.array(Image.fromarray(pixels, "RGB").convert("L"))
    if pixels.ndim == 2 and channels == "3":
        return np.repeat(pixels[..., None], 3, axis=-1)
    return pixels


def read_any(path: Path | str, data: bytes | None, spec: DecodeSpec, limits: DecodeLimits) -> Decoded:
    """The file's own pixels (not yet fitted), by its format; a 2D spec refuses a NIfTI before reading it.

    ``data=None`` with a folder path reads the DICOM series in that folder (:mod:`cbmir.data.series`); bytes
    are never taken for a folder, so an upload's name cannot reach a local folder.
    """
    name = Path(path).name
    if data is None and os.path.isdir(path):  # a folder holding one DICOM series: one volume
        if spec.dims == 2:
            raise BadFile("a DICOM series (a volume) where 2D images are expected: this dataset or index is 2D")
        return read_series(path, spec.window, limits=limits)
    kind = file_format(path)
    if kind is None:
        raise BadFile(SUPPORTED)
    if kind == "pillow":
        return read_pillow(data, spec.window, name=name, limits=limits)
    if kind == "dicom":
        return read_dicom(data, spec.window, name=name, limits=limits, dims=spec.dims)
    if spec.dims == 2:
        raise BadFile("a NIfTI volume where 2D images are expected: this dataset or index holds 2D images only")
    return read_nifti(path, spec.window, name=name, limits=limits)


def decode(path: Path | str, data: bytes | None, spec: DecodeSpec, *, limits: DecodeLimits | None = None) -> Decoded:
    """The file's pixels at the cell's size: a 2D image ``(s, s[, 3])`` or a volume ``(s, s, s)``.

    ``limits`` (default :class:`DecodeLimits`) caps what a header may claim; over a cap, or for any file that
    cannot be read, a :class:`BadFile` with one sentence. Nothing else escapes.
    """
    limits = limits or DecodeLimits()
    decoded = read_any(path, data, spec, limits)
    is_volume = decoded.spacing is not None
    if spec.dims == 2 and is_volume:
        raise BadFile(f"a volume of shape {decoded.shape} where 2D images are expected (this is a 2D dataset or index)")
    if spec.dims == 3 and not is_volume:
        raise BadFile(f"a 2D image of shape {decoded.shape} where volumes are expected (this is a 3D dataset or index)")
    try:
        if is_volume:
            if decoded.pixels.ndim != 3:
                raise BadFile(f"a colour volume of shape {decoded.shape}: volumes must be gray")
            decoded.pixels = fit_volume(decoded.pixels, spec.size, spec.fit, decoded.spacing)
        else:
            decoded.pixels = fit_image(conform_channels(decoded.pixels, spec.channels), spec.size, spec.fit)
    except MemoryError:
        raise BadFile(f"{Path(path).name} is too large to resize in this process's memory") from None
    return decoded


def decode_chunk(
    paths: list[str], spec: DecodeSpec, limits: DecodeLimits | None = None
) -> list[tuple[np.ndarray | None, dict]]:
    """Decode files in a worker: ``(pixels or None, record)`` each; a bad file never stops the chunk."""
    out = []
    for path in paths:
        record: dict = {"shape": "", "bytes": -1, "blake2b": "", "error": ""}
        try:
            if os.path.isdir(path):  # a DICOM series: one volume
                data = None
                record["bytes"], _, record["blake2b"] = folder_digest(path)
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
                record["bytes"], record["blake2b"] = len(data), hash_bytes(data)
            decoded = decode(path, data, spec, limits=limits)
            record["shape"] = "x".join(str(n) for n in decoded.shape)
            out.append((decoded.pixels, record))
        except BadFile as exc:
            out.append((None, {**record, "error": str(exc)}))
        except OSError as exc:
            out.append((None, {**record, "error": f"cannot be read ({exc.strerror or reason(exc)})"}))
        except Exception as exc:  # a decoder's own bug on a strange file must not end the ingestion
            out.append((None, {**record, "error": f"cannot be decoded ({type(exc).__name__}: {reason(exc)})"}))
    return out


def hash_chunk(paths: list[str]) -> list[str]:
    """blake2b of each file (``""`` when unreadable): the slow half of the cache check."""
    out = []
    for path in paths:
        try:
            out.append(folder_digest(path)[2] if os.path.isdir(path) else hash_file(path))
        except OSError:
            out.append("")
    return out
