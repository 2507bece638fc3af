"""The web API through FastAPI's TestClient: the page, a query by upload, bad and oversize uploads, no path escape."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cbmir.index.retrieve import Retriever
from cbmir.index.serve import create_app
from tests.helpers.index_fixtures import build_tiny_index, write_dicom


@pytest.fixture(scope="module")
def retriever(data_dir, tmp_path_factory) -> Retriever:
    folder = build_tiny_index(data_dir, tmp_path_factory.getbasetemp(), "dataset=breastmnist", "size=28")
    return Retriever(folder, device="cpu")


@pytest.fixture(scope="module")
def client(retriever) -> TestClient:
    return TestClient(create_app(retriever, max_upload_mb=0.05, k=4))


def png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_page_and_info_name_the_model_and_dataset(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text and "/api/query" in page.text
    info = client.get("/api/info").json()
    assert (info["model"], info["dataset"], info["dataset_label"], info["size"]) == (
        "tiny_resnet",
        "breastmnist",
        "BreastMNIST",
        28,
    )
    assert info["n_items"] == 24 and info["k"] == 4 and info["max_upload_mb"] == 0.05
    assert ".png" in info["accepted"] and ".dcm" in info["accepted"]


def test_upload_finds_the_case_and_shows_it(client, retriever):
    row = 11
    response = client.post("/api/query", files={"file": ("case.png", png_bytes(retriever.index.images[row]))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "case.png" and body["image"].startswith("data:image/png;base64,")
    assert [n["rank"] for n in body["neighbours"]] == [1, 2, 3, 4]
    first = body["neighbours"][0]
    assert first["row"] == row and first["source"] == f"breastmnist.npz:train[{row}]"
    assert first["label_name"] == retriever.index.items[row]["label_name"]
    assert body["vote"]["k"] == 4 and 0 < body["vote"]["share"] <= 1
    # k from the form; a DICOM upload without a suffix is recognised by its bytes
    dicom = write_dicom(Path(retriever.index.folder).parent / "q.dcm", np.asarray(retriever.index.images[row]))
    response = client.post("/api/query", files={"file": ("scan", dicom.read_bytes())}, data={"k": "2"})
    assert response.status_code == 200, response.text
    assert len(response.json()["neighbours"]) == 2


def test_thumbnails_and_full_images_by_row(client, retriever):
    thumb = Image.open(io.BytesIO(client.get("/api/thumb/3").content))
    assert thumb.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(thumb)[..., 0], retriever.index.images[3])
    full = client.get("/api/image/3")
    assert full.status_code == 200 and full.headers["content-type"] == "image/png"
    assert client.get("/api/item/3").json()["source"] == "breastmnist.npz:train[3]"


def test_bad_uploads_get_one_clear_message(client):
    response = client.post("/api/query", files={"file": ("notes.txt", b"just some text")})
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "notes.txt cannot be searched: not a supported image (PNG, JPEG, TIFF, BMP, DICOM, NIfTI)"
    )
    response = client.post("/api/query", files={"file": ("broken.png", b"\x89PNG\r\n\x1a\nbroken")})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("broken.png cannot be searched: not a readable image")
    response = client.post("/api/query", files={"file": ("volume.nii", b"\0" * 400)})
    assert response.status_code == 400 and "this index takes" in response.json()["detail"]
    assert client.post("/api/query").status_code == 422  # no file at all


def test_oversize_upload_is_refused(client):
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    assert len(big) > 0.05 * 1024 * 1024
    response = client.post("/api/query", files={"file": ("big.png", big)})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"] and "0.05 MB" in response.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/thumb/../manifest.json",
        "/api/thumb/..%2Fmanifest.json",
        "/api/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/thumb/-1",
        "/api/image/24",
        "/api/thumb/1e3",
        "/manifest.json",
        "/faiss.index",
        "/static/../../etc/passwd",
        "/api/item/99999",
    ],
)
def test_no_file_outside_the_rows_is_reachable(client, url):
    response = client.get(url)
    assert response.status_code in (404, 422)
    assert b"sha256" not in response.content and b"root:" not in response.content
