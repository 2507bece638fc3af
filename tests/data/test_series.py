"""DICOM series → one volume: sorted by position along the slice normal, checked, decoded as its NIfTI twin."""

import shutil

import numpy as np
import pydicom
import pytest

from cbmir.data.decode import BadFile, DecodeLimits, DecodeSpec, decode, read_nifti, read_series
from tests.helpers.own_fixtures import write_nifti, write_series

RNG = np.random.default_rng(3)
STORED = RNG.integers(0, 4000, (7, 8, 10)).astype(np.uint16)  # (slices, rows, columns)


def nifti_twin(path, stored=STORED, spacing=(2.5, 0.8, 0.6), origin=(-100.0, -120.0, 30.0)):
    """The same physical volume as :func:`write_series` writes, built independently in NIfTI's RAS terms.

    DICOM column c lies toward the patient's left (-x in RAS), row r toward posterior (-y): RAS voxel
    ``(i, j, k)`` holds pixel ``[k, rows-1-j, columns-1-i]``, and voxel (0, 0, 0) is the last row and column.
    """
    dz, dr, dc = spacing
    slices, rows, columns = stored.shape
    data = stored[:, ::-1, ::-1].transpose(2, 1, 0).astype(np.float32)
    affine = np.diag([dc, dr, dz, 1.0])
    affine[:3, 3] = [-origin[0] - dc * (columns - 1), -origin[1] - dr * (rows - 1), origin[2]]
    return write_nifti(path, data, affine)


def test_a_shuffled_series_decodes_as_its_nifti_twin(tmp_path):
    write_series(tmp_path / "series", STORED)
    twin = read_nifti(nifti_twin(tmp_path / "twin.nii.gz"))
    got = read_series(tmp_path / "series")
    assert got.pixels.shape == (7, 8, 10) and got.spacing == pytest.approx((2.5, 0.8, 0.6))
    np.testing.assert_array_equal(got.pixels, twin.pixels)
    fitted = decode(tmp_path / "series", None, DecodeSpec(size=16, dims=3))
    twin_fitted = decode(tmp_path / "twin.nii.gz", b"", DecodeSpec(size=16, dims=3))
    np.testing.assert_array_equal(fitted.pixels, twin_fitted.pixels)


def test_series_without_positions_falls_back_to_instance_numbers(tmp_path):
    paths = write_series(tmp_path / "s", STORED)
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(path, enforce_file_format=True)
    got = read_series(tmp_path / "s")
    # no geometry: DICOM's default axial frame, slices in InstanceNumber order
    np.testing.assert_array_equal(got.pixels, read_nifti(nifti_twin(tmp_path / "t.nii.gz")).pixels)


def _edit(path, **values):
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def test_gaps_duplicates_mixed_orientations_and_two_series_are_refused(tmp_path):
    paths = write_series(tmp_path / "gap", STORED, seed=None)
    paths[3].unlink()
    with pytest.raises(BadFile, match=r"a series with a gap: 5\.000 mm between IM0002\.dcm and IM0004\.dcm, where"):
        read_series(tmp_path / "gap")
    paths = write_series(tmp_path / "dup", STORED, seed=None)
    shutil.copy(paths[2], tmp_path / "dup" / "copy.dcm")
    _edit(tmp_path / "dup" / "copy.dcm", SOPInstanceUID="1.2.3.4")
    with pytest.raises(BadFile, match=r"two slices at one position \(IM0002\.dcm and copy\.dcm, 35\.000 mm\)"):
        read_series(tmp_path / "dup")
    paths = write_series(tmp_path / "tilt", STORED, seed=None)
    _edit(paths[1], ImageOrientationPatient=[1, 0, 0, 0, 0.8, -0.6])
    with pytest.raises(BadFile, match="a series of mixed orientations"):
        read_series(tmp_path / "tilt")
    write_series(tmp_path / "two", STORED[:3], series_uid="1.2.3")
    for path in write_series(tmp_path / "other", STORED[3:], series_uid="1.2.4"):
        path.rename(tmp_path / "two" / ("b" + path.name))
    with pytest.raises(BadFile, match=r"a folder holding 2 series \(1\.2\.3, 1\.2\.4\): one per folder"):
        read_series(tmp_path / "two")


def test_series_size_is_checked_from_headers_and_2d_refuses_it(tmp_path):
    write_series(tmp_path / "s", STORED)
    with pytest.raises(BadFile, match=r"s claims 7 × 8 × 10 = 560 voxels, .*over decode\.max_voxels=500"):
        decode(tmp_path / "s", None, DecodeSpec(size=8, dims=3), limits=DecodeLimits(max_voxels=500))
    with pytest.raises(BadFile, match="a DICOM series \\(a volume\\) where 2D images are expected"):
        decode(tmp_path / "s", None, DecodeSpec(size=8, dims=2))


def test_a_series_folder_is_one_query_decoded_as_its_nifti_twin(tmp_path):
    from PIL import Image

    from cbmir.index.query import expand
    from cbmir.index.retrieve import QueryEmbedder

    write_series(tmp_path / "series", STORED)
    twin = nifti_twin(tmp_path / "twin.nii.gz")
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("b.png", "a.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(flat / name)
    assert expand([tmp_path / "series", flat]) == [tmp_path / "series", flat / "a.png", flat / "b.png"]
    embedder = QueryEmbedder.__new__(QueryEmbedder)  # the decoding half only: no model needed
    embedder.spec, embedder.side = DecodeSpec(size=16, dims=3), None
    np.testing.assert_array_equal(
        embedder.pixels(str(tmp_path / "series"), None), embedder.pixels("twin.nii.gz", twin.read_bytes())
    )


def test_series_folders_are_ingested_as_one_volume_each(tmp_path):
    from cbmir.data import open_split
    from tests.helpers.own_fixtures import Node

    root = tmp_path / "tree"
    for c, label in enumerate(("liver", "lung")):
        for p in range(3):
            stored = np.random.default_rng([c, p]).integers(0, 4000, STORED.shape).astype(np.uint16)
            write_series(root / label / f"p{p}" / "ct", stored, seed=p)
            nifti_twin(tmp_path / "twins" / label / f"p{p}.nii.gz", stored)
    cfg = Node(
        {"kind": "folder", "name": "ct", "root": str(root), "dims": 3, "workers": 1, "split": {"fraction": 0.34}}
    )
    train, test = open_split(cfg, 16, tmp_path / "data", "train"), open_split(cfg, 16, tmp_path / "data", "test")
    sources = sorted(train.provenance.sources + test.provenance.sources)
    assert sources == [f"{label}/p{p}/ct/" for label in ("liver", "lung") for p in range(3)]
    for split in (train, test):
        for source, pixels in zip(split.provenance.sources, split.images):
            label, patient = source.split("/")[:2]
            twin = tmp_path / "twins" / label / f"{patient}.nii.gz"
            expected = decode(twin, b"", DecodeSpec(size=16, dims=3)).pixels
            np.testing.assert_array_equal(pixels, expected)
