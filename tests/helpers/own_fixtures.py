"""Own-data files for tests: class-structured PNG trees, DICOM written with pydicom, NIfTI written with nibabel."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Node(dict):
    """Stands in for the ``dataset`` config node (attribute and ``get`` access)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def class_image(c: int, rng: np.random.Generator, shape=(20, 24), rgb: bool = False) -> np.ndarray:
    """A stripe pattern per class plus noise: retrieval has signal even with random weights."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    base = 0.5 + 0.5 * np.sin(2 * np.pi * (2 + 2 * c) * (np.cos(c) * xx + np.sin(c) * yy))
    img = np.clip(40 + 160 * base + rng.normal(0, 15, shape), 0, 255)
    if rgb:
        img = img[..., None] * np.array([1.0, 0.8 + 0.05 * c, 0.6])
    return img.astype(np.uint8)


def write_tree(
    root: Path,
    classes=("benign", "malignant", "normal"),
    patients: int = 4,
    per_patient: int = 2,
    *,
    splits: tuple[str, ...] | None = None,
    suffix: str = ".png",
    seed: int = 0,
) -> Path:
    """``root/<class>/<patient>/<i>.png`` (or ``root/<split>/<class>/...``), images of varying aspect."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits or (None,):
        for c, name in enumerate(classes):
            for p in range(patients):
                folder = root / (split or "") / name / f"{name[:2]}{p}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_patient):
                    img = class_image(c, rng, (18 + p, 24))
                    Image.fromarray(img).save(folder / f"{i}{suffix}")
    return root


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    compress=None,
) -> Path:
    """A CT-like DICOM file with the given stored values (2D, or a multi-frame 3D volume)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if compress is not None:
        ds.compress(compress)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4) if affine is None else affine), str(path))
    return path


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.6),
    origin: tuple[float, float, float] = (-100.0, -120.0, 30.0),
    seed: int | None = 0,
    series_uid: str | None = None,
) -> list[Path]:
    """``stored`` ``(slices, rows, columns)`` as one axial CT series, a file per slice, in shuffled file names.

    Standard axial geometry (ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]``): slice ``k`` lies at
    ``origin + (0, 0, k × spacing[0])`` in DICOM's LPS millimetres; rows are ``spacing[1]`` apart, columns
    ``spacing[2]``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    order = np.random.default_rng(seed).permutation(len(stored)) if seed is not None else np.arange(len(stored))
    paths = []
    for k, plane in enumerate(stored):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", uid, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[0]]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[2]], spacing[0]
        ds.set_pixel_data(np.ascontiguousarray(plane), photometric_interpretation="MONOCHROME2", bits_stored=12)
        path = folder / f"IM{int(order[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
