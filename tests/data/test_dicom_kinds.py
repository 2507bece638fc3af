"""DICOM as hospitals store it: palette colour rendered to RGB as pydicom renders it, enhanced multi-frame files
windowed and rescaled per frame from their functional groups."""

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from cbmir.data.decode import DecodeSpec, decode, read_dicom, to_uint8
from tests.helpers.own_fixtures import write_dicom


def test_palette_colour_is_rgb_as_pydicom_renders_it():
    from pydicom.pixels import apply_color_lut

    path = get_testdata_file("examples_palette.dcm")  # PALETTE COLOR ultrasound, 16-bit LUT entries
    ds = pydicom.dcmread(path)
    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)
    got = read_dicom(open(path, "rb").read()).pixels
    assert got.shape == (350, 800, 3)
    np.testing.assert_array_equal(got, expected)
    coloured = (got[..., 0] != got[..., 1]) | (got[..., 1] != got[..., 2])
    assert 0.10 < coloured.mean() < 0.20  # the issue: 10-17 % of its pixels are coloured, not gray indices
    fitted = decode(path, open(path, "rb").read(), DecodeSpec(size=32)).pixels
    assert fitted.shape == (32, 32, 3)


def _group(**values) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def test_enhanced_multiframe_uses_each_frames_rescale_and_window(tmp_path):
    stored = np.stack([np.full((4, 4), v, np.uint16) for v in (100, 200, 300)])
    stored[:, 0, 0] = 0
    path = write_dicom(tmp_path / "enh.dcm", stored)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 5000, 10  # the top-level window the old decoder used for every frame
    frames = []
    for slope, center, width in [(1.0, 100, 200), (2.0, 400, 400), (1.0, 300, 100)]:
        frames.append(
            _group(
                PixelValueTransformationSequence=[_group(RescaleSlope=slope, RescaleIntercept=0, RescaleType="US")],
                FrameVOILUTSequence=[_group(WindowCenter=center, WindowWidth=width)],
            )
        )
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.SharedFunctionalGroupsSequence = [_group()]
    ds.save_as(path, enforce_file_format=True)
    got = read_dicom(path.read_bytes()).pixels
    # DICOM's linear window (PS3.3 C.11.2.1.2.1) on each frame's own rescaled values, as pydicom applies it
    from pydicom.pixels import apply_windowing

    for i, (slope, center, width) in enumerate([(1.0, 100, 200), (2.0, 400, 400), (1.0, 300, 100)]):
        item = _group(WindowCenter=center, WindowWidth=width, PixelRepresentation=0, BitsStored=12)
        item.PhotometricInterpretation = "MONOCHROME2"
        windowed = apply_windowing(stored[i] * slope, item)
        low, high = apply_windowing(np.array([-1e30, 1e30]), item)
        np.testing.assert_array_equal(got[i], to_uint8(windowed, low, high))
    assert 100 < got[0, 1, 1] < 160 and 100 < got[1, 1, 1] < 160  # each frame's value mid-window, not clipped
