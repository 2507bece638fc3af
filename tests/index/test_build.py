"""The search index on disk: build (reusing the evaluated cell), load, verify, refuse tampering; the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbmir.data import open_split
from cbmir.index.build import build_index, compose_config, default_dir, main
from cbmir.index.files import BrokenIndexError, open_index
from cbmir.index.generations import resolve
from cbmir.index.writer import synthetic_probe
from cbmir.search.exact import search_torch
from tests.helpers.index_fixtures import own_overrides, write_own_folder


@pytest.fixture(scope="module")
def blood(tiny_index) -> Path:
    return tiny_index("dataset=bloodmnist", "size=64")


def test_round_trip_is_the_evaluated_cell(blood, data_dir):
    index = open_index(blood)
    m = index.manifest
    out = blood.parents[3]
    assert blood == default_dir(
        compose_config([f"paths.output_dir={out}", "dataset=bloodmnist", "size=64", "model.name=tiny_resnet"])
    )
    assert blood.relative_to(out).parts == ("indexes", "bloodmnist", "64", "tiny_resnet")
    assert (m["model"], m["dataset"], m["size"], m["metric"], m["n_items"]) == (
        "tiny_resnet",
        "bloodmnist",
        64,
        "l2",
        24,
    )
    assert m["backbone"]["weights"] == "random" and m["preprocess"]["input_size"] is None
    assert set(m["files"]) == {"faiss.index", "embeddings.npy", "labels.npy", "items.csv", "thumbs.npy",
                               "images.npy", "probe.npy"}  # fmt: skip
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["versions"]["cbmir"] and m["versions"]["torch"]
    # the embeddings are the evaluation's own cached ones, and the FAISS index searches them exactly
    result = json.loads(Path(m["evaluation"]["result"]).read_text())
    cached = np.load(result["embeddings"]["database"], allow_pickle=False)
    np.testing.assert_array_equal(index.embeddings, cached)
    assert m["embedding_cache"]["database"]["path"] == result["embeddings"]["database"]
    d, i = index.faiss_index.search(np.ascontiguousarray(cached[:5]), 3)
    d_ref, i_ref = search_torch(cached, cached[:5], 3, "l2")
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, atol=1e-4)
    # labels, items, pixels and thumbnails are the database split's, in order
    split = open_split(compose_config(["dataset=bloodmnist"]).dataset, 64, data_dir, "train")
    np.testing.assert_array_equal(index.labels, split.labels)
    np.testing.assert_array_equal(index.images, split.images)
    # the probe is seeded noise, not a patient's pixels; its stored vector is the model's embedding of it
    np.testing.assert_array_equal(index.probe, synthetic_probe((64, 64, 3)))
    assert m["probe_row"] is None and len(m["probe_embedding"]) == 96
    assert (blood / "CURRENT").read_text().strip() == index.folder.name == "g000001"
    assert index.thumbs.shape == (24, 64, 64, 3) and index.thumbs.dtype == np.uint8
    np.testing.assert_array_equal(index.thumbs[3], split.images[3])  # 64 px RGB: a thumbnail is the image itself
    first = index.items[5]
    assert first["row"] == "5" and first["split"] == "train" and first["source"] == "bloodmnist_64.npz:train[5]"
    assert first["label"] == str(int(split.labels[5, 0])) and first["label_name"].startswith(first["label"] + " ")


def test_all_splits_small_thumbnails_and_no_pixels(tiny_index, data_dir, tmp_path):
    folder = tiny_index(
        "dataset=bloodmnist", "size=64", "index.splits=all", "index.thumb=16",
        "index.images=false", f"index.dir={tmp_path / 'idx'}",
    )  # fmt: skip
    index = open_index(folder)
    assert folder == (tmp_path / "idx").resolve()
    assert index.manifest["splits"] == {"train": 24, "test": 12} and len(index) == 36
    assert [it["split"] for it in index.items] == ["train"] * 24 + ["test"] * 12
    assert index.images is None and index.thumbs.shape == (36, 16, 16, 3)
    # a thumbnail is the box average of the image, as a gallery tile
    from cbmir.report.gallery import resize_tile

    np.testing.assert_array_equal(index.thumbs[30], resize_tile(open_split(
        compose_config(["dataset=bloodmnist"]).dataset, 64, data_dir, "test").images[6], 16))  # fmt: skip


def test_tampered_missing_and_unlisted_files_are_named(blood, tmp_path):
    root = shutil.copytree(blood, tmp_path / "copy")
    copy = resolve(root)
    labels = copy / "labels.npy"
    raw = bytearray(labels.read_bytes())
    raw[-1] ^= 1
    labels.write_bytes(bytes(raw))
    (copy / "thumbs.npy").unlink()
    with pytest.raises(BrokenIndexError) as err:
        open_index(root)
    message = str(err.value)
    assert "labels.npy: changed (sha256" in message and "thumbs.npy: missing" in message
    assert "embeddings.npy" not in message  # untouched files are not blamed
    # a manifest that stops listing a file does not make the folder pass
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["faiss.index"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BrokenIndexError, match="faiss.index: not listed"):
        open_index(root)
    (copy / "manifest.json").unlink()
    with pytest.raises(BrokenIndexError, match="manifest.json is missing"):
        open_index(root)


def test_info_lists_generations(blood, capsys):
    assert main(["info", str(blood)]) == 0
    out = capsys.readouterr().out
    assert "tiny_resnet · bloodmnist · 64 px · 24 items" in out and "privacy: plain" not in out
    assert "* g000001       24 items" in out and "build of 24" in out
    assert main(["info", str(blood), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["manifest"]["model"] == "tiny_resnet" and listed["generations"][0]["current"] is True
    assert main(["info", str(blood.parent)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_bad_index_setting_is_one_message(data_dir, tmp_path, capsys):
    args = ["build", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}", "index.splits=some"]
    assert main(args) == 2
    assert "index.splits must be one of ['database', 'all']" in capsys.readouterr().err


def test_own_data_index_records_sources_plain_or_as_pseudonyms(tmp_path):
    from cbmir.index.privacy import Privacy, load_key

    source = write_own_folder(tmp_path / "src")
    overrides = own_overrides(source, tmp_path / "out")
    folder = build_index(compose_config([*overrides, "index.privacy=plain", f"index.dir={tmp_path / 'plain'}"]))
    index = open_index(folder)
    m = index.manifest
    assert m["dataset"] == "tiny_own" and m["n_items"] == 18 and m["decode"]["channels"] == "1"
    assert m["class_names"] == {"0": "benign", "1": "malignant", "2": "normal"}
    assert m["source"] == {"kind": "folder", "root": str(source.resolve()), "manifest": None}
    assert m["privacy"] == {"mode": "plain", "key_id": None, "key_file": None}
    sources = [it["source"] for it in index.items]
    assert "train/benign/benign2.dcm" in sources and "train/normal/normal0.png" in sources
    assert {it["label_name"] for it in index.items} == {"0 benign", "1 malignant", "2 normal"}
    # the default: keyed pseudonyms, the key created owner-only outside the index, the same in a second build
    key = tmp_path / "out" / "keys" / "index.key"
    pseudo = [build_index(compose_config([*overrides, f"index.dir={tmp_path / d}"])) for d in ("p1", "p2")]
    assert key.stat().st_mode & 0o777 == 0o600
    first, second = (open_index(p) for p in pseudo)
    expected = Privacy("pseudonymous", load_key(key, create=False)).source("train/benign/benign2.dcm")
    assert expected.startswith("src-") and expected in [it["source"] for it in first.items]
    assert [it["source"] for it in first.items] == [it["source"] for it in second.items]
    assert first.manifest["privacy"]["key_id"] == second.manifest["privacy"]["key_id"]
    assert not any(it["source"] == s for it in first.items for s in sources)
    assert first.manifest["privacy"]["mode"] == "pseudonymous" and str(key) == first.manifest["privacy"]["key_file"]
    # the DICOMs of the fixture are secondary captures: vectors indexed, pixels and thumbnails withheld
    withheld = [i for i, it in enumerate(first.items) if it["withheld"]]
    assert len(withheld) == 6 and first.manifest["headers"]["burned_in_files"] == 6
    assert not np.asarray(first.images)[withheld].any() and not np.asarray(first.thumbs)[withheld].any()
    assert np.asarray(first.images)[[i for i in range(18) if i not in withheld]].any(axis=(1, 2)).all()
    assert first.manifest["headers"]["identifying_attributes"] == {"PatientID": 6, "SOPInstanceUID": 6}
