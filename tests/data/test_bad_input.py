"""Every bad file gets a reason in cbmir's words: no object reprs, no pydicom hints, truncation called truncation."""

import numpy as np
import pytest

from cbmir.data.decode import BadFile, DecodeSpec, decode
from tests.helpers.own_fixtures import write_dicom, write_nifti


def _reason(name, data, **spec) -> str:
    with pytest.raises(BadFile) as refused:
        decode(name, data, DecodeSpec(size=16, **spec))
    text = str(refused.value)
    assert text and " at 0x" not in text and "force=True" not in text
    return text


@pytest.mark.parametrize("keep", [300, 1000, 0.5, -10])
def test_a_cut_dicom_is_called_truncated(tmp_path, keep):
    data = write_dicom(tmp_path / "ct.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    assert _reason("ct.dcm", data[:cut]).startswith("a truncated DICOM file")


def test_dicom_without_preamble_and_a_report_without_pixels(tmp_path):
    data = write_dicom(tmp_path / "ct.dcm", np.zeros((8, 8), np.uint16)).read_bytes()
    assert _reason("ct.dcm", data[128:]) == (
        "not a DICOM file: no 128-byte preamble with the 'DICM' marker (DICOM Part 10) at its start"
    )
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = BasicTextSRStorage, "SR"
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert _reason("sr.dcm", (tmp_path / "sr.dcm").read_bytes()).startswith("a DICOM file without pixel data")


def test_unreadable_images_are_named_in_words():
    assert _reason("x.png", b"garbage" * 10) == "not a readable image (no PNG, JPEG, TIFF or BMP header)"
    assert _reason("x.png", b"").startswith("not a readable image")
    assert _reason("x.png", b"\x89PNG\r\n\x1a\n" + b"x" * 20).startswith("a truncated or damaged image")


def test_a_nifti_sent_to_a_2d_index_is_told_the_index_is_2d(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), np.float32))
    assert _reason(path, path.read_bytes(), dims=2) == (
        "a NIfTI volume where 2D images are expected: this dataset or index holds 2D images only"
    )


def test_a_damaged_nifti_names_the_file_not_its_path(tmp_path):
    path = write_nifti(tmp_path / "v.nii", np.zeros((4, 4, 4), np.float32))
    path.write_bytes(b"\0" * 400)
    text = _reason(path, path.read_bytes(), dims=3)
    assert text.startswith("not a readable NIfTI file") and str(tmp_path) not in text


def test_pydicom_warnings_are_logged_with_the_file_name_not_printed(tmp_path, caplog):
    import logging
    import warnings
    from io import BytesIO

    import pydicom
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = pydicom.dcmread(write_dicom(tmp_path / "ct.dcm", np.zeros((8, 8), np.uint16)))
    parts = []
    for implicit, write in (
        (False, lambda f: write_file_meta_info(f, ds.file_meta)),
        (True, lambda f: write_dataset(f, ds)),
    ):
        buffer = BytesIO()
        fp = DicomFileLike(buffer)
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write(fp)
        parts.append(buffer.getvalue())
    data = b"\0" * 128 + b"DICM" + parts[0] + parts[1]  # the meta says explicit VR, the dataset is implicit
    with warnings.catch_warnings(record=True) as shown, caplog.at_level(logging.INFO, logger="cbmir.data.dicom"):
        warnings.simplefilter("always")
        assert decode("ct.dcm", data, DecodeSpec(size=8)).pixels.shape == (8, 8)
    assert shown == []
    assert "ct.dcm: pydicom: Expected explicit VR, but found implicit VR" in caplog.text
