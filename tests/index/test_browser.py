"""End to end in a real headless browser: start the server, open the page, upload an image, read the cases.

Drives the system's chromium (``make browser-deps`` installs Debian's package) through Playwright; no browser
is downloaded. The screenshot goes to ``$CBMIR_SCREENSHOT`` when set (``docs/serve.png`` is made that way),
else into the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbmir.index.retrieve import Retriever
from cbmir.index.serve import create_app
from tests.helpers.index_fixtures import build_tiny_index

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")


def system_chromium() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium on PATH: run `make browser-deps` (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    import uvicorn

    folder = build_tiny_index(data_dir, tmp_path_factory.getbasetemp(), "dataset=bloodmnist", "size=64")
    retriever = Retriever(folder, device="cpu")
    port = free_port()
    config = uvicorn.Config(create_app(retriever), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", retriever
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_in_the_browser_shows_the_cases(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, retriever = server
    row = 13
    query = tmp_path / "blood_cell.png"
    Image.fromarray(np.asarray(retriever.index.images[row])).save(query)
    bad = tmp_path / "report.png"
    bad.write_text("not an image")
    shot = Path(os.environ.get("CBMIR_SCREENSHOT") or tmp_path / "serve.png")

    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where chromium's sandbox cannot start
        browser = p.chromium.launch(executable_path=system_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1060, "height": 560})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('index').textContent.includes('Model')")
            header = page.inner_text("#index")
            assert "tiny_resnet" in header and "BloodMNIST" in header and "24 cases" in header

            page.set_input_files("#file", str(bad))
            page.wait_for_function("document.getElementById('error').textContent.includes('cannot be searched')")
            assert "report.png cannot be searched: not a readable image" in page.inner_text("#error")

            page.set_input_files("#file", str(query))
            page.wait_for_selector("#cases .case")
            cases = page.eval_on_selector_all(
                "#cases .case",
                "els => els.map(e => ({row: +e.dataset.row, text: e.innerText,"
                " loaded: e.querySelector('img').complete && e.querySelector('img').naturalWidth > 0}))",
            )
            assert len(cases) == 5
            assert cases[0]["row"] == row and f"bloodmnist_64.npz:train[{row}]" in cases[0]["text"]
            assert cases[0]["text"].startswith("#1 · " + retriever.index.items[row]["label_name"])
            page.wait_for_function("[...document.querySelectorAll('#cases img')].every(i => i.naturalWidth > 0)")
            assert "suggested label:" in page.inner_text("#vote")
            assert page.eval_on_selector("#query-image", "i => i.naturalWidth") == 64
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))

            page.click("#cases .case >> nth=1")  # open a case full size
            page.wait_for_function("document.getElementById('viewer-image').naturalWidth > 0")
            assert page.is_visible("#viewer")
            assert "bloodmnist_64.npz:train[" in page.inner_text("#viewer-caption")
        finally:
            browser.close()
    assert shot.stat().st_size < 300_000
    assert Image.open(shot).size == (1060, 560)
