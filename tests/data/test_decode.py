"""Own files decoded by the library made for each format, checked against a direct decode; fitting to the size."""

import numpy as np
import pytest
from PIL import Image

from cbmir.data.decode import BadFile, DecodeSpec, decode, decode_chunk, file_format, read_dicom, to_uint8
from cbmir.data.fit import fit_image, fit_volume
from tests.helpers.own_fixtures import write_dicom, write_nifti

RNG = np.random.default_rng(0)


def _decode(path, size, **spec):
    return decode(path, path.read_bytes(), DecodeSpec(size=size, **spec)).pixels


# --- Pillow ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_8bit_gray_and_rgb_equal_a_direct_decode(tmp_path, suffix):
    gray = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for name, arr in (("g", gray), ("c", rgb)):
        path = tmp_path / f"{name}{suffix}"
        Image.fromarray(arr).save(path)
        expected = np.array(Image.open(path))  # JPEG is lossy: the reference is Pillow's own decode
        got = _decode(path, 16)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_rgb_with_equal_channels_is_gray_unless_channels_3(tmp_path):
    gray = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(np.repeat(gray[..., None], 3, -1)).save(path)
    np.testing.assert_array_equal(_decode(path, 8), gray)
    assert _decode(path, 8, channels="3").shape == (8, 8, 3)
    colour = tmp_path / "c.png"
    Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(colour)
    np.testing.assert_array_equal(_decode(colour, 8, channels="1"), np.array(Image.open(colour).convert("L")))


def test_palette_and_alpha(tmp_path):
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    palette = tmp_path / "p.png"
    Image.fromarray(rgb).quantize(16).save(palette)
    np.testing.assert_array_equal(_decode(palette, 8), np.array(Image.open(palette).convert("RGB")))
    rgba = np.concatenate([rgb, RNG.integers(0, 256, (8, 8, 1), dtype=np.uint8)], -1)
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    expected = (rgba[..., :3].astype(np.uint32) * rgba[..., 3:] + 127) // 255  # composited over black
    np.testing.assert_array_equal(_decode(path, 8), expected.astype(np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_is_min_max_or_the_configured_window(tmp_path, suffix):
    values = RNG.integers(1000, 5000, (12, 12)).astype(np.uint16)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(values).save(path)
    raw = np.array(Image.open(path)).astype(np.float64)
    np.testing.assert_array_equal(raw, values)
    minmax = np.rint((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(_decode(path, 12), minmax)
    windowed = np.rint(np.clip((raw - 2000) / 2000, 0, 1) * 255).astype(np.uint8)  # center 3000, width 2000
    np.testing.assert_array_equal(_decode(path, 12, window=(3000.0, 2000.0)), windowed)


# --- DICOM ----------------------------------------------------------------------------------------


def _linear_window(values, center, width):
    """DICOM's LINEAR window (PS3.3 C.11.2.1.2.1) onto 0-255, written out independently of pydicom."""
    return np.rint(np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255).astype(np.uint8)


def test_dicom_rescale_then_min_max(tmp_path):
    stored = RNG.integers(0, 4096, (10, 12)).astype(np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored, slope=2.0, intercept=-1024.0)
    hu = stored * 2.0 - 1024.0
    assert _decode(path, 12).shape == (12, 12)  # padded to the cell's square
    got = read_dicom(path.read_bytes()).pixels
    np.testing.assert_array_equal(got, to_uint8(hu))
    assert got.shape == (10, 12)


def test_dicom_file_window_and_configured_window(tmp_path):
    stored = RNG.integers(0, 4096, (10, 12)).astype(np.uint16)
    path = write_dicom(tmp_path / "w.dcm", stored, slope=1.0, intercept=-1024.0, window=(40.0, 400.0))
    hu = stored - 1024.0
    got = read_dicom(path.read_bytes()).pixels
    assert np.abs(got.astype(int) - _linear_window(hu, 40.0, 400.0)).max() <= 1
    configured = read_dicom(path.read_bytes(), window=(500.0, 1000.0)).pixels
    np.testing.assert_array_equal(configured, np.rint(np.clip((hu - 0) / 1000, 0, 1) * 255).astype(np.uint8))


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = RNG.integers(0, 4096, (10, 12)).astype(np.uint16)
    one = read_dicom(write_dicom(tmp_path / "1.dcm", stored, photometric="MONOCHROME1").read_bytes()).pixels
    two = read_dicom(write_dicom(tmp_path / "2.dcm", stored).read_bytes()).pixels
    np.testing.assert_array_equal(one, 255 - two)
    assert two[stored == stored.max()].min() == 255


def test_dicom_multiframe_is_a_volume(tmp_path):
    stored = RNG.integers(0, 4096, (6, 8, 8)).astype(np.uint16)
    path = write_dicom(tmp_path / "v.dcm", stored)
    decoded = read_dicom(path.read_bytes())
    assert decoded.pixels.shape == (6, 8, 8) and decoded.spacing is not None
    np.testing.assert_array_equal(decoded.pixels, to_uint8(stored))
    with pytest.raises(BadFile, match="volume .* where 2D images are expected"):
        _decode(path, 8)
    assert _decode(path, 8, dims=3).shape == (8, 8, 8)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_dicom_equals_uncompressed(tmp_path, syntax):
    import pydicom.uid

    stored = RNG.integers(0, 4096, (64, 64)).astype(np.uint16)  # OpenJPEG's default 6 levels need 64 px
    plain = read_dicom(write_dicom(tmp_path / "p.dcm", stored).read_bytes()).pixels
    path = write_dicom(tmp_path / "c.dcm", stored, compress=getattr(pydicom.uid, syntax))
    import pydicom

    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    np.testing.assert_array_equal(read_dicom(path.read_bytes()).pixels, plain)


def test_unsupported_transfer_syntax_is_a_bad_file(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    path = write_dicom(tmp_path / "m.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x01" * 8])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    [(pixels, record)] = decode_chunk([str(path)], DecodeSpec(size=8))
    assert pixels is None and "cannot be decoded" in record["error"] and "MPEG2" in record["error"]


def test_suffixless_dicom_is_recognised_and_garbage_is_not(tmp_path):
    path = write_dicom(tmp_path / "IM0001", np.zeros((4, 4), np.uint16))
    assert file_format(path) == "dicom"
    (tmp_path / "README").write_text("not an image")
    assert file_format(tmp_path / "README") is None and file_format(tmp_path / "x.txt") is None
    corrupt = tmp_path / "bad.dcm"
    corrupt.write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02")
    [(pixels, record)] = decode_chunk([str(corrupt)], DecodeSpec(size=8))
    assert pixels is None and record["error"]


# --- NIfTI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_axial_slices_in_canonical_orientation(tmp_path, suffix):
    data = RNG.normal(100, 30, (8, 9, 10)).astype(np.float32)  # (x, y, z) in RAS
    path = write_nifti(tmp_path / f"v{suffix}", data)
    expected = to_uint8(data.transpose(2, 1, 0)[:, ::-1, ::-1])
    got = decode(path, b"", DecodeSpec(size=10, dims=3, fit="stretch"))
    assert got.shape == (8, 9, 10) and got.spacing == (1.0, 1.0, 1.0)
    # a file stored left-right flipped (x axis pointing left) decodes to the same slices
    flipped = np.diag([-1.0, 1, 1, 1])
    flipped[0, 3] = 7
    same = write_nifti(tmp_path / f"f{suffix}", data[::-1].copy(), flipped)
    from cbmir.data.decode import read_nifti

    np.testing.assert_array_equal(read_nifti(path).pixels, expected)
    np.testing.assert_array_equal(read_nifti(same).pixels, expected)
    assert got.pixels.shape == (10, 10, 10)
    with pytest.raises(
        BadFile, match="NIfTI volume where 2D images are expected: this dataset or index holds 2D images only"
    ):
        decode(path, b"", DecodeSpec(size=10))


def test_nifti_keeps_physical_proportions_when_padding(tmp_path):
    data = np.full((10, 10, 5), 200, np.float32)
    data[0, 0, 0] = 0
    affine = np.diag([1.0, 1.0, 4.0, 1.0])  # 5 slices of 4 mm: 20 mm deep, 10 mm wide
    pixels = decode(write_nifti(tmp_path / "a.nii", data, affine), b"", DecodeSpec(size=20, dims=3)).pixels
    occupied = [np.flatnonzero(pixels.max(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    assert [len(o) for o in occupied] == [20, 10, 10]


# --- fitting --------------------------------------------------------------------------------------


def test_fit_pad_crop_stretch():
    img = np.full((10, 20), 255, np.uint8)
    padded = fit_image(img, 28, "pad")
    assert padded.shape == (28, 28) and padded[:7].max() == 0 and padded[21:].max() == 0 and padded[7:21].min() == 255
    assert fit_image(img, 28, "crop").min() == 255 and fit_image(img, 28, "stretch").min() == 255
    rgb = np.full((30, 10, 3), 9, np.uint8)
    assert fit_image(rgb, 12, "pad").shape == (12, 12, 3)
    same = RNG.integers(0, 256, (28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(fit_image(same, 28, "pad"), same)
    vol = np.full((4, 8, 8), 100, np.uint8)
    out = fit_volume(vol, 16, "pad")
    assert out.shape == (16, 16, 16) and out[:4].max() == 0 and out[4:12].min() == 100
