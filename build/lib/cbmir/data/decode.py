"""Own image files to uint8 arrays, each format through the library made for it.

* PNG, JPEG, TIFF, BMP: Pillow. 8-bit gray and RGB are kept as they are; palette images are
  expanded; alpha is composited over black; 16-bit (and 32-bit/float) images are mapped to
  8 bits by ``dataset.window`` when one is configured, else by their own min-max.
* DICOM: pydicom (compressed transfer syntaxes through its pylibjpeg plugins). The modality
  LUT / rescale slope and intercept first, then the configured window, else the file's own
  VOI LUT or window, else min-max; MONOCHROME1 is inverted; a multi-frame file is a volume.
* NIfTI (``.nii``, ``.nii.gz``): nibabel, reoriented to the closest canonical (RAS) axes and
  laid out as axial slices ``(z, y, x)`` with anterior up and the patient's right on the left
  (radiological view); scaling (scl_slope/inter) applied; window or min-max as above.

Every decoder returns a :class:`Decoded` (uint8 pixels + the source's shape and voxel
spacing); :func:`decode_file` then fits it to the cell's size (:mod:`cbmir.data.fit`). These
functions run in worker processes, so they import neither torch nor the rest of cbmir's data
pipeline, and raise :class:`BadFile` with a reason a user can act on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from cbmir.data.fit import fit_image, fit_volume

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class BadFile(Exception):
    """A file that cannot become an item: unreadable, corrupt, unsupported or of the wrong kind."""


@dataclass(frozen=True)
class DecodeSpec:
    """Everything that decides the pixels of an ingested item (part of the ingested content key)."""

    size: int
    dims: int = 2  # 2 = images, 3 = volumes
    fit: str = "pad"  # pad | crop | stretch
    channels: str = "auto"  # auto | 1 | 3 (2D only; volumes are gray)
    window: tuple[float, float] | None = None  # (center, width) in the source's units


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8 (H, W) | (H, W, 3) | (D, H, W)
    shape: tuple[int, ...]  # the source's own shape (before any resizing)
    spacing: tuple[float, ...] | None = None  # voxel size per axis of ``pixels`` (volumes)


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


def hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: Path | str) -> str:
    """blake2b (128-bit) of the file's bytes: the content half of the ingestion key."""
    with open(path, "rb") as fh:
        return hash_bytes(fh.read())


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


def _over_black(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over a black background (MedMNIST's backgrounds are dark), rounded."""
    a = alpha.astype(np.uint32)
    if color.ndim == 3:
        a = a[..., None]
    return ((color.astype(np.uint32) * a + 127) // 255).astype(np.uint8)


def read_pillow(data: bytes, window: tuple[float, float] | None = None) -> Decoded:
    """PNG/JPEG/TIFF/BMP (first frame of a multi-page file) to gray or RGB uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(BytesIO(data)) as im:
            im.load()
            shape = (im.height, im.width)
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode == "1":
                im = im.convert("L")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.array(im)
            mode = im.mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadFile(f"not a readable image ({exc})") from None
    if mode in ("LA", "RGBA"):
        arr = _over_black(arr[..., :-1] if mode == "RGBA" else arr[..., 0], arr[..., -1])
    elif arr.dtype != np.uint8:  # I;16*, I, F: more than 8 bits
        arr = to_uint8(arr, *window_bounds(window))
    if arr.ndim == 3:
        shape = (*shape, arr.shape[-1])
    return Decoded(arr, shape)


def _voi_range(ds) -> tuple[float, float]:
    """The output range of pydicom's ``apply_voi_lut`` on this file (its LUT's bit depth, or the window's limits)."""
    from pydicom.pixels import apply_windowing

    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        return 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    low, high = apply_windowing(np.array([-1e30, 1e30]), ds)
    return float(low), float(high)


def read_dicom(data: bytes, window: tuple[float, float] | None = None) -> Decoded:
    """One DICOM file: a 2D image, or a volume ``(frames, H, W)`` when it holds several frames."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise BadFile(f"not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise BadFile("a DICOM file without pixel data (a report, structured report or presentation state?)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # no plugin for the transfer syntax, truncated or corrupt pixel data
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise BadFile(f"DICOM pixel data ({name}) cannot be decoded: {exc}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shape = tuple(int(n) for n in arr.shape)
    spacing = None
    if frames > 1:
        rows = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
        depth = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        spacing = (depth, *rows)
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour: pydicom has converted YBR to RGB already
        pixels = arr if arr.dtype == np.uint8 else to_uint8(arr)
        return Decoded(pixels, shape, spacing)
    values = apply_modality_lut(arr, ds)
    if window is not None:
        pixels = to_uint8(values, *window_bounds(window))
    elif ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        pixels = to_uint8(apply_voi_lut(values, ds, prefer_lut=True), *_voi_range(ds))
    else:
        pixels = to_uint8(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # low values are white: invert to MONOCHROME2
        pixels = 255 - pixels
    return Decoded(pixels, shape, spacing)


def read_nifti(path: Path | str, window: tuple[float, float] | None = None) -> Decoded:
    """A NIfTI volume as axial slices ``(z, y, x)`` in canonical orientation, and its voxel spacing."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        values = np.asanyarray(img.dataobj, dtype=np.float64)
    except (ImageFileError, OSError, ValueError, EOFError) as exc:
        raise BadFile(f"not a readable NIfTI file ({exc})") from None
    shape = tuple(int(n) for n in values.shape)
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise BadFile(f"a NIfTI image of shape {shape}: only 3D volumes are supported")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    slices = values.transpose(2, 1, 0)[:, ::-1, ::-1]  # RAS (x, y, z) -> (z, anterior up, patient right on the left)
    return Decoded(to_uint8(slices, *window_bounds(window)), shape, (zooms[2], zooms[1], zooms[0]))


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


def decode(path: Path | str, data: bytes, spec: DecodeSpec) -> Decoded:
    """The file's pixels at the cell's size: a 2D image ``(s, s[, 3])`` or a volume ``(s, s, s)``."""
    kind = file_format(path)
    if kind is None:
        raise BadFile("not a supported image (PNG, JPEG, TIFF, BMP, DICOM, NIfTI)")
    if kind == "pillow":
        decoded = read_pillow(data, spec.window)
    elif kind == "dicom":
        decoded = read_dicom(data, spec.window)
    else:
        decoded = read_nifti(path, spec.window)
    is_volume = decoded.spacing is not None
    if spec.dims == 2 and is_volume:
        raise BadFile(f"a volume of shape {decoded.shape} in a 2D dataset (set dataset.dims=3 for volumes)")
    if spec.dims == 3 and not is_volume:
        raise BadFile(f"a 2D image of shape {decoded.shape} in a 3D dataset (dataset.dims=3 takes volumes only)")
    if is_volume:
        if decoded.pixels.ndim != 3:
            raise BadFile(f"a colour volume of shape {decoded.shape}: volumes must be gray")
        decoded.pixels = fit_volume(decoded.pixels, spec.size, spec.fit, decoded.spacing)
    else:
        decoded.pixels = fit_image(conform_channels(decoded.pixels, spec.channels), spec.size, spec.fit)
    return decoded


def decode_chunk(paths: list[str], spec: DecodeSpec) -> list[tuple[np.ndarray | None, dict]]:
    """Decode files in a worker: ``(pixels or None, record)`` each; a bad file never stops the chunk."""
    out = []
    for path in paths:
        record: dict = {"shape": "", "bytes": -1, "blake2b": "", "error": ""}
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            record["bytes"], record["blake2b"] = len(data), hash_bytes(data)
            decoded = decode(path, data, spec)
            record["shape"] = "x".join(str(n) for n in decoded.shape)
            out.append((decoded.pixels, record))
        except BadFile as exc:
            out.append((None, {**record, "error": str(exc)}))
        except OSError as exc:
            out.append((None, {**record, "error": f"cannot be read ({exc.strerror or exc})"}))
        except Exception as exc:  # a decoder's own bug on a strange file must not end the ingestion
            out.append((None, {**record, "error": f"cannot be decoded ({type(exc).__name__}: {exc})"}))
    return out


def hash_chunk(paths: list[str]) -> list[str]:
    """blake2b of each file (``""`` when unreadable): the slow half of the cache check."""
    out = []
    for path in paths:
        try:
            out.append(hash_file(path))
        except OSError:
            out.append("")
    return out
