"""No patient data in an index by default: names, IDs, folder and file names appear in no byte of it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cbmir.index.build import build_index, compose_config
from cbmir.index.phi import burned_in_reason, identifying, scan_headers
from cbmir.index.privacy import Privacy, load_key, privacy_for_build
from cbmir.index.query import main as query_main
from cbmir.index.retrieve import Retriever
from tests.helpers.index_fixtures import own_overrides
from tests.helpers.medmnist_fixtures import class_images

#: (class, split, patient folder, file stem, PatientName, PatientID): every string must stay out of the index.
PATIENTS = [
    ("benign", "train", "DoeJane_MRN4471", "JaneDoe_scan", "Doe^Jane", "PID-4471"),
    ("benign", "test", "RoeRichard_MRN5582", "RichardRoe_scan", "Roe^Richard", "PID-5582"),
    ("malignant", "train", "MustermannErika_MRN6693", "ErikaMustermann_scan", "Mustermann^Erika", "PID-6693"),
    ("malignant", "test", "PublicJohnQ_MRN7704", "JohnQPublic_scan", "Public^John^Q", "PID-7704"),
]


def _dicom(path: Path, pixels: np.ndarray, name: str, pid: str, *, burned_in: str | None = None) -> Path:
    """A CT DICOM carrying the patient's name and ID (and, when asked, a BurnedInAnnotation flag)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate = "CT", name, pid, "19700101"
    ds.InstitutionName = "St Elsewhere Hospital"
    if burned_in:
        ds.BurnedInAnnotation = burned_in
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _secrets() -> list[str]:
    return [s for p in PATIENTS for s in (p[2], p[3], p[4], p[5])] + ["St Elsewhere"]


@pytest.fixture(scope="module")
def phi_index(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    base = tmp_path_factory.mktemp("phi")
    src = base / "src"
    rng = np.random.default_rng(3)
    for c, (label, split, folder, stem, name, pid) in enumerate(PATIENTS):
        images = class_images(np.full(3, 0 if label == "benign" else 1), 40, rgb=False, rng=rng)
        for i, img in enumerate(images):
            flag = "YES" if (c, i) == (0, 2) else None
            _dicom(src / split / label / folder / f"{stem}{i}.dcm", img, name, pid, burned_in=flag)
    return src, base / "out", [str(p) for p in sorted(src.rglob("*.dcm"))]


def test_no_patient_string_in_the_index_its_json_page_or_api(phi_index, tmp_path, caplog, capsys):
    from fastapi.testclient import TestClient

    from cbmir.index.serve import create_app

    src, out, files = phi_index
    with caplog.at_level(logging.INFO, logger="cbmir.index.build"):
        folder = build_index(compose_config([*own_overrides(src, out), "index.splits=all"]))
    log_text = caplog.text
    assert "12 DICOM file(s) carry identifying attributes" in log_text
    assert "PatientName (12)" in log_text and "PatientID (12)" in log_text and "InstitutionName (12)" in log_text
    everything = b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
    retriever = Retriever(folder, device="cpu")
    capsys.readouterr()
    queries = [tmp_path / "q0.dcm", tmp_path / "q1.dcm"]  # the queries' own names are the user's, echoed back
    for q, f in zip(queries, (files[0], files[5])):
        q.write_bytes(Path(f).read_bytes())
    assert query_main([str(folder), *map(str, queries), "--json", "-k", "12"]) == 0
    answer = capsys.readouterr().out
    assert len(json.loads(answer)["results"][0]["neighbours"]) == 12
    client = TestClient(create_app(retriever))
    pages = [client.get("/").text, client.get("/api/info").text]
    pages += [client.get(f"/api/item/{row}").text for row in range(len(retriever.index))]
    with open(files[0], "rb") as fh:
        pages.append(client.post("/api/query", files={"file": ("upload.dcm", fh.read())}, data={"k": "12"}).text)
    for secret in _secrets():
        for form in {secret, secret.lower(), secret.replace("^", " ")}:
            assert form.encode() not in everything, f"{form} is in the index folder"
            assert form not in answer and form not in log_text
            assert not any(form in page for page in pages), f"{form} is served"
    # the burned-in file's vector is searchable, its pixels and thumbnail are not kept
    index = retriever.index
    withheld = [r for r, it in enumerate(index.items) if it["withheld"]]
    assert len(withheld) == 1 and index.items[withheld[0]]["withheld"] == "BurnedInAnnotation = YES"
    assert not np.asarray(index.thumbs[withheld[0]]).any() and not np.asarray(index.images[withheld[0]]).any()
    assert sum(1 for r in range(len(index)) if np.asarray(index.thumbs[r]).any()) == 11


def test_header_scan_uses_the_standard_profile_and_names_no_value(phi_index):
    _, _, files = phi_index
    scan = scan_headers(files)
    assert scan.dicom_files == 12 and len(scan.burned_in) == 1
    assert {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName"} <= set(scan.attributes)
    assert "Rows" not in scan.attributes and "Modality" not in scan.attributes  # not identifying in PS3.15 E.1-1
    assert identifying(0x00100010) and identifying(0x50000000 | 0x0010) and not identifying(0x00280010)
    text = json.dumps(scan.summary())
    assert all(secret not in text for secret in _secrets())


def test_burned_in_rules():
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, UltrasoundImageStorage

    def ds(**kw) -> Dataset:
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    assert burned_in_reason(ds(SOPClassUID=CTImageStorage, BurnedInAnnotation="YES")) == "BurnedInAnnotation = YES"
    assert "Secondary Capture" in burned_in_reason(ds(SOPClassUID=SecondaryCaptureImageStorage))
    assert "Ultrasound" in burned_in_reason(ds(SOPClassUID=UltrasoundImageStorage))
    assert burned_in_reason(ds(SOPClassUID=UltrasoundImageStorage, BurnedInAnnotation="NO")) == ""
    assert burned_in_reason(ds(Modality="US")).startswith("modality US")
    assert burned_in_reason(ds(SOPClassUID=CTImageStorage, Modality="CT")) == ""


def test_key_file_rules(tmp_path):
    key_file = tmp_path / "keys" / "index.key"
    privacy, path = privacy_for_build("pseudonymous", str(key_file), tmp_path / "idx")
    assert path == key_file and key_file.stat().st_mode & 0o777 == 0o600
    again = Privacy("pseudonymous", load_key(key_file, create=False))
    assert privacy.group("Doe^Jane") == again.group("Doe^Jane") != privacy.source("Doe^Jane")
    assert Privacy("plain").group("Doe^Jane") == "Doe^Jane" and Privacy("none").source("a/b.png") == ""
    from cbmir.errors import ConfigError

    with pytest.raises(ConfigError, match="lies inside the index folder"):
        privacy_for_build("pseudonymous", str(tmp_path / "idx" / "k"), tmp_path / "idx")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others; chmod 600"):
        load_key(key_file, create=False)
    with pytest.raises(ConfigError, match="index.privacy must be one of"):
        privacy_for_build("open", None, tmp_path)
