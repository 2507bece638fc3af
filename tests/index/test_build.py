"""The search index on disk: build (reusing the evaluated cell), load, verify, refuse tampering; the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbmir.data import open_split
from cbmir.index import files as index_files
from cbmir.index.build import build_index, compose_config, default_dir, main
from cbmir.index.files import BrokenIndexError, open_index
from cbmir.search.exact import search_torch
from tests.helpers.index_fixtures import build_tiny_index, own_overrides, write_own_folder


@pytest.fixture(scope="module")
def blood(data_dir, tmp_path_factory) -> Path:
    return build_tiny_index(data_dir, tmp_path_factory.getbasetemp(), "dataset=bloodmnist", "size=64")


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
    np.testing.assert_array_equal(index.probe, split.images[0])
    assert index.thumbs.shape == (24, 64, 64, 3) and index.thumbs.dtype == np.uint8
    np.testing.assert_array_equal(index.thumbs[3], split.images[3])  # 64 px RGB: a thumbnail is the image itself
    first = index.items[5]
    assert first["row"] == "5" and first["split"] == "train" and first["source"] == "bloodmnist_64.npz:train[5]"
    assert first["label"] == str(int(split.labels[5, 0])) and first["label_name"].startswith(first["label"] + " ")


def test_all_splits_small_thumbnails_and_no_pixels(data_dir, tmp_path):
    folder = build_tiny_index(
        data_dir, tmp_path, "dataset=bloodmnist", "size=64", "index.splits=all", "index.thumb=16",
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
    copy = shutil.copytree(blood, tmp_path / "copy")
    labels = copy / "labels.npy"
    raw = bytearray(labels.read_bytes())
    raw[-1] ^= 1
    labels.write_bytes(bytes(raw))
    (copy / "thumbs.npy").unlink()
    with pytest.raises(BrokenIndexError) as err:
        open_index(copy)
    message = str(err.value)
    assert "labels.npy: changed (sha256" in message and "thumbs.npy: missing" in message
    assert "embeddings.npy" not in message  # untouched files are not blamed
    # a manifest that stops listing a file does not make the folder pass
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["faiss.index"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BrokenIndexError, match="faiss.index: not listed"):
        open_index(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BrokenIndexError, match="manifest.json is missing"):
        open_index(copy)


def test_pickled_arrays_are_refused(blood, tmp_path):
    copy = shutil.copytree(blood, tmp_path / "copy")
    np.save(copy / "labels.npy", np.array([{"x": 1}] * 24, dtype=object), allow_pickle=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    path = copy / "labels.npy"
    manifest["files"]["labels.npy"] = {"bytes": path.stat().st_size, "sha256": index_files.sha256_file(path)}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="allow_pickle"):
        open_index(copy)


def test_info_prints_the_manifest(blood, capsys):
    assert main(["info", str(blood)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "tiny_resnet"
    assert main(["info", str(blood.parent)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_bad_index_setting_is_one_message(data_dir, tmp_path, capsys):
    args = ["build", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}", "index.splits=some"]
    assert main(args) == 2
    assert "index.splits must be one of ['database', 'all']" in capsys.readouterr().err


def test_own_data_index_records_sources(tmp_path):
    source = write_own_folder(tmp_path / "src")
    folder = build_index(compose_config(own_overrides(source, tmp_path / "out")))
    index = open_index(folder)
    m = index.manifest
    assert m["dataset"] == "tiny_own" and m["n_items"] == 18 and m["decode"]["channels"] == "1"
    assert m["class_names"] == {"0": "benign", "1": "malignant", "2": "normal"}
    assert m["dataset_root"] == str(source.resolve())
    sources = [it["source"] for it in index.items]
    assert "train/benign/benign2.dcm" in sources and "train/normal/normal0.png" in sources
    assert {it["label_name"] for it in index.items} == {"0 benign", "1 malignant", "2 normal"}
