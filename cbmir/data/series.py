"""A DICOM series (one file per slice, as CT and MR are stored) assembled into one volume.

The files of a folder that share one SeriesInstanceUID are sorted by ImagePositionPatient projected on the
slice normal (the cross product of ImageOrientationPatient's row and column directions), InstanceNumber
where positions are missing; the slice spacing comes from the positions. Gaps, duplicate positions, mixed
orientations or pixel grids, and a folder holding several series are bad input, named in a sentence.

The geometry is a few lines of numpy on pydicom's attributes rather than SimpleITK's or dicom2nifti's
series readers: those read the files themselves (outside cbmir's header checks and size caps) and are heavy
dependencies for a dot product. The assembled volume gets the affine its positions say (LPS → RAS) and goes
through the NIfTI reader's own canonical path (:func:`cbmir.data.nifti.radiological`), so one physical volume
stored as a series or as a NIfTI decodes to the same array.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from cbmir.data.dicom import voi_range
from cbmir.data.nifti import radiological
from cbmir.data.pixels import BadFile, Decoded, DecodeLimits, check_size, file_format, reason, window_bounds

#: Relative deviation of one slice step from the median step that counts as a gap (or an overlap).
GAP_TOLERANCE = 0.01


@dataclass
class Slice:
    name: str
    data: bytes
    header: object  # pydicom Dataset without pixel data


def series_files(folder: Path | str) -> list[Path]:
    """The DICOM files directly in ``folder`` (by suffix, or suffix-less with the ``DICM`` marker), sorted."""
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.startswith(".") and entry.is_file() and file_format(entry.path) == "dicom":
            out.append(Path(entry.path))
    return out


def is_series_folder(folder: Path | str) -> bool:
    """Whether ``folder`` holds two or more DICOM files and no other image: one volume, not many images."""
    if not os.path.isdir(folder):
        return False
    images = [e for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".") and file_format(e.path)]
    return len(images) >= 2 and all(file_format(e.path) == "dicom" for e in images)


def single_frame(path: Path | str) -> bool:
    """Whether a DICOM file holds one frame (a slice of a series), from its header alone."""
    import pydicom

    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return int(header.get("NumberOfFrames") or 1) == 1
    except Exception:
        return False


def group_series(paths: list[str]) -> dict[str, list[str]]:
    """Folders whose files (among ``paths``) are two or more single-frame DICOM files: folder -> its files.

    For 3D own data: such a folder is one series, one item; multi-frame files and NIfTI stay items of their own.
    """
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        by_folder.setdefault(os.path.dirname(path), []).append(path)
    return {
        folder: files
        for folder, files in by_folder.items()
        if len(files) >= 2 and all(file_format(f) == "dicom" and single_frame(f) for f in files)
    }


def folder_digest(folder: Path | str) -> tuple[int, int, str]:
    """A series folder's total bytes, newest mtime (ns) and blake2b over its files' names and bytes."""
    import hashlib

    digest, size, newest = hashlib.blake2b(digest_size=16), 0, 0
    for path in series_files(folder):
        data = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        size, newest = size + len(data), max(newest, path.stat().st_mtime_ns)
    return size, newest, digest.hexdigest()


def _headers(folder: Path, limits: DecodeLimits) -> list[Slice]:
    import pydicom

    slices = []
    for path in series_files(folder):
        data = path.read_bytes()
        try:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
                rows, columns = int(header.Rows), int(header.Columns)
        except Exception as exc:
            raise BadFile(f"{path.name} in the series cannot be read ({reason(exc)})") from None
        check_size(path.name, (rows, columns), limits, volume=False)
        slices.append(Slice(path.name, data, header))
    if len(slices) < 2:
        raise BadFile(f"a folder with {len(slices)} DICOM file(s): a series needs two slices or more")
    return slices


def _one_series(slices: list[Slice]) -> None:
    uids = sorted({str(s.header.get("SeriesInstanceUID", "")) for s in slices})
    if len(uids) > 1:
        raise BadFile(f"a folder holding {len(uids)} series ({', '.join(u or '(none)' for u in uids)}): one per folder")
    grids = {(int(s.header.Rows), int(s.header.Columns), tuple(s.header.get("PixelSpacing") or ())) for s in slices}
    if len(grids) > 1:
        raise BadFile(f"a series whose slices have different sizes or pixel spacings: {sorted(grids, key=str)}")


def _orientation(slices: list[Slice]) -> np.ndarray | None:
    """The row and column direction cosines ``(2, 3)`` shared by every slice; None when no slice has them."""
    found = [s.header.get("ImageOrientationPatient") for s in slices]
    if all(f is None for f in found):
        return None
    if any(f is None for f in found):
        raise BadFile("a series where some slices have an ImageOrientationPatient and some do not")
    values = np.array([[float(v) for v in f] for f in found]).reshape(len(found), 2, 3)
    if not np.allclose(values, values[0], atol=1e-4):
        raise BadFile("a series of mixed orientations: its slices have different ImageOrientationPatient")
    return values[0]


def sort_slices(slices: list[Slice]) -> tuple[list[Slice], float, np.ndarray | None]:
    """Slices in order along the normal, the slice spacing, and the (row, column, normal) directions or None."""
    orientation = _orientation(slices)
    positions = [s.header.get("ImagePositionPatient") for s in slices]
    if orientation is not None and all(p is not None for p in positions):
        normal = np.cross(orientation[0], orientation[1])
        along = np.array([float(np.dot([float(v) for v in p], normal)) for p in positions])
        order = np.argsort(along, kind="stable")
        steps = np.diff(along[order])
        if (steps < 1e-3).any():
            i = int(np.flatnonzero(steps < 1e-3)[0])
            a, b = slices[order[i]].name, slices[order[i + 1]].name
            raise BadFile(f"a series with two slices at one position ({a} and {b}, {along[order[i]]:.3f} mm)")
        spacing = float(np.median(steps))
        off = np.flatnonzero(np.abs(steps - spacing) > GAP_TOLERANCE * spacing)
        if off.size:
            i = int(off[0])
            raise BadFile(
                f"a series with a gap: {steps[i]:.3f} mm between {slices[order[i]].name} and "
                f"{slices[order[i + 1]].name}, where its slices are {spacing:.3f} mm apart"
            )
        return [slices[i] for i in order], spacing, np.stack([orientation[0], orientation[1], normal])
    numbers = [s.header.get("InstanceNumber") for s in slices]
    if any(n is None for n in numbers) or len({int(n) for n in numbers}) < len(numbers):
        raise BadFile("a series without slice positions and without distinct InstanceNumbers: its order is unknown")
    header = slices[0].header
    spacing = float(header.get("SpacingBetweenSlices") or header.get("SliceThickness") or 1.0)
    return sorted(slices, key=lambda s: int(s.header.InstanceNumber)), spacing, None


def _affine(first, spacing: float, directions: np.ndarray | None) -> np.ndarray:
    """Voxel ``(column, row, slice)`` → RAS millimetres, from the first slice's position and the directions."""
    rows, columns = [float(v) for v in (first.get("PixelSpacing") or (1.0, 1.0))]
    affine = np.eye(4)
    if directions is not None:
        affine[:3, 0] = directions[0] * columns  # along a row: the column index
        affine[:3, 1] = directions[1] * rows
        affine[:3, 2] = directions[2] * spacing
        affine[:3, 3] = [float(v) for v in first.ImagePositionPatient]
    else:  # no geometry: DICOM's default axial frame
        affine[:3, :3] = np.diag([columns, rows, spacing])
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM's LPS to NIfTI's RAS


def read_series(
    folder: Path | str, window: tuple[float, float] | None = None, *, limits: DecodeLimits | None = None
) -> Decoded:
    """The series in ``folder`` as axial slices ``(z, y, x)`` in canonical orientation, as a NIfTI decodes."""
    import nibabel as nib
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    folder = Path(folder)
    limits = limits or DecodeLimits()
    slices = _headers(folder, limits)
    _one_series(slices)
    first = slices[0].header
    check_size(folder.name, (len(slices), int(first.Rows), int(first.Columns)), limits, volume=True)
    ordered, spacing, directions = sort_slices(slices)
    volume = np.empty((int(first.Columns), int(first.Rows), len(ordered)), dtype=np.float64)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for k, s in enumerate(ordered):
            try:
                ds = pydicom.dcmread(BytesIO(s.data))
                plane = apply_modality_lut(ds.pixel_array, ds)
            except Exception as exc:
                raise BadFile(f"{s.name} in the series cannot be decoded ({reason(exc)})") from None
            if plane.shape != volume.shape[1::-1]:
                raise BadFile(f"{s.name} in the series is not one gray {first.Rows} × {first.Columns} slice")
            volume[:, :, k] = plane.T  # NIfTI's layout: (column, row, slice)
    bounds = window_bounds(window)
    if window is None and ("WindowCenter" in first or first.get("VOILUTSequence")):
        volume = apply_voi_lut(volume, first, prefer_lut=True)
        bounds = voi_range(first)
    img = nib.Nifti1Image(volume, _affine(first, spacing, directions))
    return radiological(img, bounds, folder.name)
