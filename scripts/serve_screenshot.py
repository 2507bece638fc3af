"""The README's picture of the search page, on real images rather than the tests' synthetic stripes.

The index holds real medical files that ship with the libraries cbmir already depends on: pydicom's CT and MR
test files (each stored in several transfer syntaxes: the same image, encoded differently) and scikit-image's
immunohistochemistry, retina fundus and cell microscopy images, cut into tiles. It is built with ResNet-50 with
**random weights** (the hub is unreachable here), so the neighbours show the page, not a model's quality. The
server runs with a token file, as a group would run it; Debian's chromium takes the picture (``make browser-deps``).

    python scripts/serve_screenshot.py --out docs/serve.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the server-in-a-thread helper of the server tests

TOKEN = "screenshot-user-0123456789"
DICOM = {
    "CT": ["CT_small.dcm", "liver_1frame.dcm", "liver_expb_1frame.dcm"],
    "MR": ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm",
           "MR_small_expb.dcm", "MR_small_bigendian.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"],
}  # fmt: skip
TILED = {"immunohistochemistry": ("ihc.png", 128), "retina": ("retina.jpg", 256), "cells": ("cell.png", 96)}


def tiles(path: Path, side: int) -> list[np.ndarray]:
    image = np.asarray(Image.open(path).convert("RGB"))
    h, w = image.shape[:2]
    return [
        image[y : y + side, x : x + side] for y in range(0, h - side + 1, side) for x in range(0, w - side + 1, side)
    ]


def collection(root: Path) -> Path:
    """``root/<class>/<files>`` from the libraries' own files; returns the held-out query."""
    import skimage
    from pydicom.data import get_testdata_file

    for label, names in DICOM.items():
        (root / label).mkdir(parents=True)
        for name in names:
            shutil.copy(get_testdata_file(name), root / label / name)
    data = Path(skimage.__file__).parent / "data"
    query = None
    for label, (name, side) in TILED.items():
        (root / label).mkdir()
        parts = [t for t in tiles(data / name, side) if t.std() > 12]  # no empty background tiles
        for i, tile in enumerate(parts[:-1]):
            Image.fromarray(tile).save(root / label / f"{Path(name).stem}_{i:02d}.png")
        if label == "immunohistochemistry":
            query = root.parent / "ihc_query.png"  # a tile the index does not hold
            Image.fromarray(parts[-1]).save(query)
    assert query is not None
    return query


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from cbmir.index.build import build_index, compose_config
    from cbmir.index.serve import create_app, open_served
    from cbmir.index.server.live import Live
    from tests.helpers.serve_fixtures import running_server
    from tests.index.test_browser import poll, system_chromium

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        query = collection(work / "real_files")
        overrides = [
            "dataset=folder", f"dataset.root={work / 'real_files'}", "dataset.name=real_files",
            "dataset.label=pydicom + scikit-image files", "size=64", "model=resnet50", "model.pretrained=false",
            "num_workers=0", "logger=csv", f"paths.output_dir={work / 'out'}", "index.splits=all",
        ]  # fmt: skip
        folder = build_index(compose_config(overrides))
        tokens = work / "tokens.txt"
        tokens.write_text(f"reader:{TOKEN}\n")
        tokens.chmod(0o600)
        app = create_app(Live(open_served(folder, check=True, device="cpu")), token_file=tokens)
        with running_server(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=system_chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1060, "height": 560})
            page.goto(url + "/")
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            poll(page, "document.getElementById('index').textContent.includes('Model')")
            page.set_input_files("#file", str(query))
            page.wait_for_selector("#cases .case")
            poll(page, "[...document.querySelectorAll('#cases img')].every(i => i.naturalWidth > 0)")
            time.sleep(0.3)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            found = page.eval_on_selector_all("#cases .case", "els => els.map(e => e.innerText.split('\\n')[0])")
            browser.close()
    print(f"{args.out}: the query's neighbours: {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
