"""NIfTI volumes through nibabel, with the header's shape checked before any voxel is read or inflated.

Reoriented to the closest canonical (RAS) axes and laid out as axial slices ``(z, y, x)`` with anterior up
and the patient's right on the left (radiological view); scaling (scl_slope/inter) applied; window or
min-max as for DICOM.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from cbmir.data.pixels import BadFile, Decoded, DecodeLimits, check_size, reason, to_uint8, window_bounds

log = logging.getLogger(__name__)


def read_nifti(
    path: Path | str,
    window: tuple[float, float] | None = None,
    *,
    name: str | None = None,
    limits: DecodeLimits | None = None,
) -> Decoded:
    """A NIfTI volume as axial slices ``(z, y, x)`` in canonical orientation, and its voxel spacing.

    nibabel's warnings (a damaged extension, an odd header) are logged with the file's name, never printed.
    """
    name = name or Path(path).name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _read(path, window, name, limits or DecodeLimits())
        finally:
            for w in caught:
                log.info("%s: nibabel: %s", name, reason(w.message, path, name))


def _read(
    path: Path | str,
    window: tuple[float, float] | None,
    name: str,
    limits: DecodeLimits,
) -> Decoded:
    import nibabel as nib

    try:
        img = nib.load(str(path))  # the header only: the voxels stay on disk behind a proxy
        shape = tuple(int(n) for n in img.shape)
    except Exception as exc:  # ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, …
        raise BadFile(f"not a readable NIfTI file ({reason(exc, path, name)})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise BadFile(f"a NIfTI image of shape {shape}: only 3D volumes are supported")
    check_size(name, shape, limits, volume=True, detail=f"{img.get_data_dtype()} voxels")
    return radiological(img, window_bounds(window), name, path)


def radiological(img, bounds: tuple[float | None, float | None], name: str, path: object = None) -> Decoded:
    """A nibabel image (a NIfTI file's, or a DICOM series' with its affine) as the axial slices cbmir stores.

    Closest canonical (RAS) axes, then ``(z, y, x)`` with anterior up and the patient's right on the left,
    mapped to 8 bits between ``bounds`` (``(None, None)``: the volume's min-max).
    """
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(img)
        values = np.asanyarray(img.dataobj, dtype=np.float64)
        if isinstance(values, np.memmap) or not values.flags.writeable:  # float64 on disk: never write there
            values = np.array(values)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except MemoryError:
        raise BadFile(f"{name} is too large to decode in this process's memory") from None
    except (EOFError, OSError) as exc:
        raise BadFile(f"a truncated NIfTI file: its voxel data ends early ({reason(exc, path, name)})") from None
    except Exception as exc:
        raise BadFile(f"not a readable NIfTI file ({reason(exc, path, name)})") from None
    if values.ndim == 4:
        values = values[..., 0]
    slices = values.transpose(2, 1, 0)[:, ::-1, ::-1]  # RAS (x, y, z) -> (z, anterior up, patient right on the left)
    shape = tuple(int(n) for n in img.shape[:3])
    pixels = to_uint8(slices, *bounds, overwrite=True)  # ``values`` is this function's own scratch array
    return Decoded(pixels, shape, (zooms[2], zooms[1], zooms[0]))
