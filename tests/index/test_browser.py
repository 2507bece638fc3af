"""End to end in a real headless browser: start the server, open the page, upload an image, read the cases.

Drives the system's chromium (``make browser-deps`` installs Debian's package) through Playwright; no browser
is downloaded. The screenshot goes to ``$CBMIR_SCREENSHOT`` when set (``docs/serve.png`` is made that way),
else into the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbmir.index.retrieve import Retriever
from cbmir.index.serve import create_app
from tests.helpers.serve_fixtures import running_server

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")


def system_chromium() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium on PATH: run `make browser-deps` (apt-get install chromium)")


TOKEN = "browser-user-0123456789"


def poll(page, expression: str, timeout: float = 30.0) -> None:
    """Wait until ``expression`` is true in the page. Playwright's ``wait_for_function`` evaluates its predicate
    with ``eval`` inside the page, which the page's content security policy forbids (as it should)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.monotonic() < deadline, f"the page never reached: {expression}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tiny_index, tmp_path_factory):
    folder = tiny_index("dataset=bloodmnist", "size=64")
    retriever = Retriever(folder, device="cpu")
    tokens = tmp_path_factory.mktemp("browser") / "tokens.txt"
    tokens.write_text(f"reader:{TOKEN}\n")
    tokens.chmod(0o600)
    with running_server(create_app(retriever, token_file=tokens)) as url:
        yield url, retriever


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
            page.goto(url + "/")  # a token file guards the server: the login form first, then the page
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            poll(page, "document.getElementById('index').textContent.includes('Model')")
            header = page.inner_text("#index")
            assert "tiny_resnet" in header and "BloodMNIST" in header and "24 cases" in header

            page.set_input_files("#file", str(bad))
            poll(page, "document.getElementById('error').textContent.includes('cannot be searched')")
            assert "report.png cannot be searched: not a readable image" in page.inner_text("#error")

            page.set_input_files("#file", str(query))
            page.wait_for_selector("#cases .case")
            cases = page.eval_on_selector_all(
                "#cases .case",
                "els => els.map(e => ({row: +e.dataset.row, text: e.innerText,"
                " loaded: e.querySelector('img').complete && e.querySelector('img').naturalWidth > 0}))",
            )
            assert len(cases) == 5
            assert cases[0]["row"] == row and retriever.index.items[row]["source"] in cases[0]["text"]
            assert cases[0]["text"].startswith("#1 · " + retriever.index.items[row]["label_name"])
            poll(page, "[...document.querySelectorAll('#cases img')].every(i => i.naturalWidth > 0)")
            assert "suggested label:" in page.inner_text("#vote")
            assert page.eval_on_selector("#query-image", "i => i.naturalWidth") == 64
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))

            page.click("#cases .case >> nth=1")  # open a case full size
            poll(page, "document.getElementById('viewer-image').naturalWidth > 0")
            assert page.is_visible("#viewer")
            assert retriever.index.items[cases[1]["row"]]["source"] in page.inner_text("#viewer-caption")
            assert not page.is_visible("#insecure")  # the red banner is for --insecure-no-auth only
        finally:
            browser.close()
    assert shot.stat().st_size < 300_000
    assert Image.open(shot).size == (1060, 560)


def test_the_page_shows_the_open_access_banner_and_the_plain_paths_note(server):
    from unittest import mock

    from playwright.sync_api import sync_playwright

    _, retriever = server
    plain = {"privacy": {"mode": "plain", "key_id": None, "key_file": None}}
    app = create_app(retriever, insecure_no_auth=True)
    with mock.patch.dict(retriever.manifest, plain), running_server(app) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=system_chromium(), args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(url + "/")
                poll(page, "document.getElementById('index').textContent.includes('Model')")
                assert page.is_visible("#insecure") and "no access control" in page.inner_text("#insecure")
                assert page.is_visible("#plain") and "index.privacy=plain" in page.inner_text("#plain")
            finally:
                browser.close()
