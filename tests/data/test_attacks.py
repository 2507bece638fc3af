"""Issue 18's attack files, built in the test: each refused from its header, with the peak RSS growth measured.

Limits: the defaults (``decode.max_pixels`` 100 Mpx, ``decode.max_voxels`` 512 Mvoxels) refuse the RLE header
claiming 65535², the 12000² RGB PNG and the 30000² bomb; the deflated 8192² and the 512³ NIfTI lie under them
(a 67 Mpx image and a 134 Mvoxel volume are legitimate for ingestion), so they are tried with the caps a
server would set (16 Mpx, 64 Mvoxels). Memory: growth of this process's peak RSS (VmHWM, reset before the
decode) far below the decoded size.
"""

import numpy as np
import pytest

from cbmir.data.decode import BadFile, DecodeLimits, DecodeSpec, decode
from tests.helpers.attack_files import (
    deflated_dicom_of_zeros,
    nifti_of_zeros,
    png_of_zeros,
    rle_dicom_claiming,
)
from tests.helpers.memory import peak_rss_growth

SERVER_LIKE = DecodeLimits(max_pixels=4096 * 4096, max_voxels=64 * 1024**2)
#: Peak RSS growth allowed while a hostile file is refused (the decoded sizes are 0.13-8.6 GB).
BOUND_MB = 200

ATTACKS = [
    # (builder, file name, dims, limits, expected sentence, largest file size in bytes)
    (
        lambda p: rle_dicom_claiming(p),
        "rle.dcm",
        2,
        DecodeLimits(),
        r"rle\.dcm claims 65535 × 65535 = 4\.29 Gpx, 1 sample\(s\) of 16 bits \(8\.59 GB decoded\), "
        r"over decode\.max_pixels=100000000: refused before decoding",
        8_000,
    ),
    (
        lambda p: deflated_dicom_of_zeros(p),
        "zeros.dcm",
        2,
        SERVER_LIKE,
        r"zeros\.dcm claims 8192 × 8192 = 67\.1 Mpx, .* over decode\.max_pixels=16777216: refused before decoding",
        140_000,
    ),
    (
        lambda p: png_of_zeros(p, 12000, 12000, rgb=True),
        "wide.png",
        2,
        DecodeLimits(),
        r"wide\.png claims 12000 × 12000 = 144 Mpx, RGB PNG, over decode\.max_pixels=100000000",
        430_000,
    ),
    (
        lambda p: png_of_zeros(p, 30000, 30000),
        "bomb.png",
        2,
        DecodeLimits(),
        r"bomb\.png claims 900,000,000 px, over decode\.max_pixels=100000000 and Pillow's decompression-bomb limit",
        900_000,
    ),
    (
        lambda p: nifti_of_zeros(p, 512),
        "zeros.nii.gz",
        3,
        SERVER_LIKE,
        r"zeros\.nii\.gz claims 512 × 512 × 512 = 134 Mvoxels, float32 voxels, over decode\.max_voxels=67108864",
        1_200_000,
    ),
]


@pytest.mark.parametrize(
    "build, name, dims, limits, sentence, most_bytes",
    ATTACKS,
    ids=["rle65535", "deflated8192", "png12000", "bomb30000", "nifti512"],
)
def test_attack_file_is_refused_from_its_header_in_bounded_memory(
    tmp_path, build, name, dims, limits, sentence, most_bytes
):
    path = build(tmp_path / name)
    data = path.read_bytes()
    assert len(data) <= most_bytes  # as small as the files
    with peak_rss_growth() as peak, pytest.raises(BadFile, match=sentence) as refused:
        decode(path, data, DecodeSpec(size=64, dims=dims), limits=limits)
    assert str(tmp_path) not in str(refused.value)  # the file's name, never a (temporary) path
    assert peak["mb"] < BOUND_MB, f"{name}: peak RSS grew {peak['mb']:.0f} MB while refusing it"


def test_deflated_stream_longer_than_its_header_is_not_inflated(tmp_path):
    """A header claiming 64² over a stream of 8192² zeros: inflation stops at what the header declares."""
    path = deflated_dicom_of_zeros(tmp_path / "liar.dcm", side=8192, claimed=64)
    with peak_rss_growth() as peak, pytest.raises(BadFile, match=r"liar\.dcm inflates to more than the 64 × 64 pixels"):
        decode(path, path.read_bytes(), DecodeSpec(size=64))
    assert peak["mb"] < 50


def test_a_small_deflated_dicom_still_decodes(tmp_path):
    path = deflated_dicom_of_zeros(tmp_path / "small.dcm", side=64)
    decoded = decode(path, path.read_bytes(), DecodeSpec(size=32))
    assert decoded.shape == (64, 64)
    np.testing.assert_array_equal(decoded.pixels, np.zeros((32, 32), np.uint8))


def test_uncompressed_dicom_shorter_than_its_header_is_truncated(tmp_path):
    from tests.helpers.own_fixtures import write_dicom

    path = write_dicom(tmp_path / "cut.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = path.read_bytes()
    with pytest.raises(BadFile, match=r"^a truncated DICOM file"):
        decode(path, data[: len(data) - 3000], DecodeSpec(size=32))


@pytest.mark.parametrize(
    "node, key",
    [
        ({"max_pixels": 0}, "decode.max_pixels"),
        ({"max_voxels": "lots"}, "decode.max_voxels"),
        ({"max_pixels": True}, "decode.max_pixels"),
    ],
)
def test_limits_from_config_name_the_key(node, key):
    from cbmir.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        DecodeLimits.from_config(node)
    assert DecodeLimits.from_config(None) == DecodeLimits() == DecodeLimits.from_config({})
    assert DecodeLimits.from_config({"max_pixels": 10, "max_voxels": 20}) == DecodeLimits(10, 20)
