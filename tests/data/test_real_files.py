"""Folders and manifests as people really leave them: links, loops, two spellings of one file, formula strings."""

import csv
import json

import numpy as np
from PIL import Image

from cbmir.data import open_split
from cbmir.data.folder import list_folder
from cbmir.data.manifest import read_manifest
from tests.helpers.own_fixtures import Node, write_tree


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), value, np.uint8)).save(path)
    return path


def test_link_loops_are_bad_files_not_oserrors(tmp_path):
    root = write_tree(tmp_path / "tree", patients=1)
    (root / "benign" / "be0" / "self.png").symlink_to("self.png")  # a file link to itself
    (root / "benign" / "be0" / "up").symlink_to("..")  # a folder link to its own parent
    listing = list_folder(root)
    assert listing.bad == {
        "benign/be0/self.png": "a link loop: a link that points back to itself",
        "benign/be0/up": "a link loop: a folder link back to one of its own parent folders",
    }
    assert len(listing.entries) == 6  # 3 classes × 1 patient × 2 images, each once


def test_a_link_to_a_file_of_the_tree_is_one_item_and_reported(tmp_path):
    root = tmp_path / "tree"
    ct = _png(root / "ct" / "p0" / "ct1.png")
    _png(root / "mr" / "p1" / "mr1.png", 9)
    (root / "mr" / "p1" / "ct_again.png").symlink_to(ct)  # the CT would count a second time, as MR
    listing = list_folder(root)
    assert [(e.source, e.labels) for e in listing.entries] == [("ct/p0/ct1.png", ("ct",)), ("mr/p1/mr1.png", ("mr",))]
    assert listing.bad == {
        "mr/p1/ct_again.png": "the same file as ct/p0/ct1.png (reached again through a link): one item"
    }


def test_manifest_links_and_spellings_resolve_to_real_files(tmp_path):
    folder = tmp_path / "m"
    _png(folder / "img" / "ct1.png")
    _png(folder / "img" / "ct2.png", 5)
    outside = _png(tmp_path / "secret" / "x.png")
    (folder / "img" / "escape.png").symlink_to(outside)
    (folder / "img" / "loop.png").symlink_to("loop.png")
    rows = [
        "path,label",
        "img/ct1.png,a",  # row 2
        "img/../img/ct1.png,b",  # row 3: the same file, another spelling
        "img/escape.png,a",  # row 4: a link leaving the folder
        "img/loop.png,a",  # row 5
        "img/ct2.png,b",  # row 6
    ]
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    listing = read_manifest(folder / "m.csv")
    assert [e.source for e in listing.entries] == ["img/ct1.png", "img/ct2.png"]
    root = folder.resolve()
    assert listing.bad == {
        "img/../img/ct1.png (row 3)": "the same file as row 2 (img/ct1.png): listed twice",
        "img/escape.png (row 4)": f"a link that leaves the manifest's folder {root} (set dataset.allow_absolute=true "
        "to allow)",
        "img/loop.png (row 5)": "a link loop: a link that points back to itself",
    }
    allowed = read_manifest(folder / "m.csv", allow_absolute=True)
    assert [e.source for e in allowed.entries] == ["img/ct1.png", "img/escape.png", "img/ct2.png"]


FORMULAS = ['=HYPERLINK("http://evil.example","x")', "=cmd|' /C calc'!A0"]


def test_formula_strings_are_neutralised_in_every_csv_and_kept_raw_in_json(tmp_path):
    folder = tmp_path / "m"
    rows = [["path", "label", "group", "split", "note"]]
    for i in range(8):
        _png(folder / f"{i}.png", 30 * (i % 2) + i)
        rows.append([f"{i}.png", ["=1+1", "@SUM(1)"][i % 2], f"p{i}", "test" if i >= 6 else "train", FORMULAS[i % 2]])
    _png(folder / "=bad.png").write_bytes(b"not a png")
    rows.append(["=bad.png", "=1+1", "p9", "train", "x"])
    with open(folder / "m.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    cfg = Node({"kind": "manifest", "name": "inj", "path": str(folder / "m.csv"), "workers": 1, "on_bad_file": "skip"})
    train = open_split(cfg, 8, tmp_path / "data", "train")
    ingested = train.provenance.metadata.parent
    assert not (ingested.parent / f"{ingested.name}.partial").exists()
    for name in ("train_metadata.csv", "bad_files.csv", "skipped.csv"):
        with open(ingested / name, newline="") as fh:
            cells = [c for row in csv.reader(fh) for c in row]
        assert all(not c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells), name
    with open(ingested / "train_metadata.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {r["label"] for r in table} == {"'=1+1", "'@SUM(1)"}
    assert {r["note"] for r in table} == {"'" + f for f in FORMULAS}
    raw = json.loads((ingested / "train_metadata.json").read_text())
    notes = {row[raw["columns"].index("note")] for row in raw["rows"]}
    assert notes == set(FORMULAS)  # cbmir reads the raw values; the CSV is for people
    assert "'=bad.png" in (ingested / "bad_files.csv").read_text()
    assert train.provenance.class_names == {"0": "=1+1", "1": "@SUM(1)"}
