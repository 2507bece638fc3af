"""Tiny search indexes for the index, query, serve and browser tests, and the own-data trees they index.

Tests must not change a shared index; a test that tampers with one works on a copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.config import TINY_CNN, base_overrides
from tests.helpers.medmnist_fixtures import class_images


def build_tiny_index(data_dir: Path, out: Path, *extra: str) -> Path:
    """``cbmir index build`` in-process with the tiny CNN on the MedMNIST fixtures (the session's ``tiny_index``
    fixture builds each setting once and shares it)."""
    from cbmir.index.build import build_index, compose_config

    return build_index(compose_config(base_overrides(data_dir, out) + list(extra)))


def own_overrides(source: Path, out: Path) -> list[str]:
    """A tiny own-data cell (dataset=folder) with the tiny CNN."""
    return [
        "dataset=folder",
        f"dataset.root={source}",
        "dataset.name=tiny_own",
        "dataset.workers=1",
        "size=32",
        f"paths.output_dir={out}",
        "model.pretrained=false",
        "num_workers=0",
        "batch_size=8",
        "logger=csv",
        *TINY_CNN,
    ]


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    """An 8-bit MONOCHROME2 DICOM file holding ``pixels``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "anon"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_own_folder(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """``root/<split>/<class>/<file>``: gray PNGs, and every third database item a DICOM file instead."""
    from PIL import Image

    per_class = per_class or {"train": 6, "test": 2}
    rng = np.random.default_rng(11)
    for split, count in per_class.items():
        for c, name in enumerate(("benign", "malignant", "normal")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(class_images(np.full(count, c), 40, rgb=False, rng=rng)):
                if split == "train" and i % 3 == 2:
                    write_dicom(folder / f"{name}{i}.dcm", img)
                else:
                    Image.fromarray(img).save(folder / f"{name}{i}.png")
    return root
