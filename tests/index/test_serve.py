"""The web API through FastAPI's TestClient: the page, a query by upload, bad and oversize uploads, no path escape."""

from __future__ import annotations

import asyncio
import io
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cbmir.index.retrieve import Retriever
from cbmir.index.serve import create_app
from tests.helpers.index_fixtures import write_dicom
from tests.helpers.serve_fixtures import png_bytes


@pytest.fixture(scope="module")
def retriever(tiny_index) -> Retriever:
    folder = tiny_index("dataset=breastmnist", "size=28")
    return Retriever(folder, device="cpu")


@pytest.fixture(scope="module")
def client(retriever) -> TestClient:
    return TestClient(create_app(retriever, max_upload_mb=0.05, k=4))


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
    response = client.post("/api/query")  # no file at all
    assert response.status_code == 400 and response.json()["detail"].startswith("send the image as multipart")


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


# ---------------------------------------------------------------------------------------------- hostile uploads
def post_chunked(app, parts: list[bytes], boundary: str, repeat: bytes, times: int) -> tuple[httpx.Response, int]:
    """POST a multipart body as a chunked stream (no Content-Length): ``parts[0]``, ``repeat`` × ``times``,
    ``parts[1]``; returns the response and how many bytes the server pulled from the stream."""
    pulled = 0

    async def body():
        nonlocal pulled
        for chunk in (parts[0], *([repeat] * times), parts[1]):
            pulled += len(chunk)
            yield chunk

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
            return await client.post("/api/query", content=body(), headers=headers)

    return asyncio.run(go()), pulled


def test_chunked_upload_without_length_is_refused_at_the_limit(retriever, tmp_path, monkeypatch):
    # anything the server spooled to disk would land in this empty folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = create_app(retriever, max_upload_mb=1, k=4)
    boundary = "cbmirboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()
    chunk = 64 * 1024
    response, pulled = post_chunked(app, [head, f"\r\n--{boundary}--\r\n".encode()], boundary, b"\0" * chunk, 1024)
    assert "content-length" not in response.request.headers  # 64 MB offered, chunked
    assert response.status_code == 413
    assert response.json()["detail"] == "the upload is too large: this server takes files up to 1 MB"
    assert 1024 * 1024 < pulled <= 1024 * 1024 + chunk + len(head)  # refused at the first chunk past 1 MB
    assert list(tmp_path.iterdir()) == []  # nothing written to disk
    # a declared length over the limit is refused before a byte is read
    declared = TestClient(app).post(
        "/api/query", content=b"x", headers={"content-length": str(64 << 20), "content-type": "multipart/form-data"}
    )
    assert declared.status_code == 413


@pytest.mark.slow  # builds the five files (~12 s of zlib, once per session)
def test_every_attack_file_is_a_400_with_one_sentence(client, attacks):
    expected = {
        "rle_65535.dcm": "65535",
        "deflated_8192.dcm": "8192",
        "rgb_12000.png": "12000",
        "bomb_30000.png": "30000",
        "zeros_512.nii.gz": "this index takes",  # a volume sent to a 2D index
    }
    big = TestClient(create_app(client.app.state.live.current.retriever, max_upload_mb=5, k=4))
    for name, path in attacks.items():
        response = big.post("/api/query", files={"file": (name, path.read_bytes())})
        assert response.status_code == 400, (name, response.text)
        detail = response.json()["detail"]
        assert detail.startswith(f"{name} cannot be searched: ") and expected[name] in detail, detail
        assert "\n" not in detail and "Traceback" not in detail


@pytest.mark.slow
def test_a_3d_index_refuses_the_512_cubed_nifti(tiny_index, attacks):
    folder = tiny_index("dataset=adrenalmnist3d", "size=28")
    app = create_app(Retriever(folder, device="cpu"), max_upload_mb=5)
    response = TestClient(app).post(
        "/api/query", files={"file": ("zeros.nii.gz", attacks["zeros_512.nii.gz"].read_bytes())}
    )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("zeros.nii.gz cannot be searched: ") and "512 × 512 × 512" in detail
    assert "max_voxels=64000000" in detail  # the server's own cap (--max-voxels), below ingestion's


def test_a_full_pool_answers_503_with_retry_after(retriever):
    app = create_app(retriever, workers=1, queue=0)
    pool_full = threading.Event()
    release = threading.Event()
    original = retriever.query

    def slow_query(*args, **kwargs):
        pool_full.set()
        release.wait(10)
        return original(*args, **kwargs)

    body = png_bytes(retriever.index.images[2])
    with TestClient(app) as client, mock.patch.object(retriever, "query", slow_query):
        first = ThreadPoolExecutor(1).submit(client.post, "/api/query", files={"file": ("a.png", body)})
        assert pool_full.wait(10)
        busy = client.post("/api/query", files={"file": ("b.png", body)})
        release.set()
        assert first.result(timeout=30).status_code == 200
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert busy.json()["detail"] == "the server is busy (1 queries running, 0 waiting); try again shortly"


def test_an_unexpected_error_is_a_500_sentence_without_traceback(retriever, caplog):
    app = create_app(retriever)
    with mock.patch.object(retriever, "item", side_effect=RuntimeError("boom\nsecond line")):
        response = TestClient(app).get("/api/item/1")
    assert response.status_code == 500
    assert response.json() == {"detail": "the server failed on this request; the error is in its log"}
    assert any("internal error on GET /api/item/1: RuntimeError" in r.message for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)


def test_bad_form_fields_are_400s(client, retriever):
    body = png_bytes(retriever.index.images[2])
    response = client.post("/api/query", files={"file": ("a.png", body)}, data={"k": "500"})
    assert (
        response.status_code == 400 and response.json()["detail"] == "k must be a whole number from 1 to 50 (got '500')"
    )
    response = client.post("/api/query", files={"file": ("a.png", body)}, data={"where": "benign"})
    assert response.status_code == 400 and "expected COLUMN=VALUE" in response.json()["detail"]
    two = [("file", ("a.png", body)), ("file", ("b.png", body))]
    response = client.post("/api/query", files=two)
    assert (
        response.status_code == 400 and response.json()["detail"] == "send exactly one file, in the form field `file`"
    )
