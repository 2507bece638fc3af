"""Own data ingested once: folder trees and manifests, metadata, bad inputs, re-ingestion, resume, parallel decode."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from cbmir.data import dataset_facts, ingest, open_split
from cbmir.data.decode import DecodeSpec, decode
from cbmir.errors import ConfigError, DataError
from tests.helpers.own_fixtures import Node, write_dicom, write_nifti, write_tree


def folder_cfg(root, **extra):
    return Node({"kind": "folder", "name": "tumours", "root": str(root), "workers": 1, **extra})


def manifest_cfg(path, **extra):
    return Node({"kind": "manifest", "name": "chest", "path": str(path), "workers": 1, **extra})


def both(cfg, data_dir, size=28):
    return open_split(cfg, size, data_dir, "train"), open_split(cfg, size, data_dir, "test")


def ingested_folder(split):
    return split.provenance.metadata.parent


def test_folder_tree_split_by_patient(tmp_path):
    root = write_tree(tmp_path / "tree", patients=5)
    train, test = both(folder_cfg(root), tmp_path / "data")
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (28, 28)
    assert isinstance(train.images, np.memmap) and len(train) + len(test) == 30
    assert set(train.provenance.groups).isdisjoint(test.provenance.groups)  # no patient on both sides
    assert train.provenance.class_names == {"0": "benign", "1": "malignant", "2": "normal"}
    assert set(test.labels.ravel()) == {0, 1, 2}
    # each item equals a direct decode of its source file
    spec = DecodeSpec(size=28)
    for split in (train, test):
        for i in (0, len(split) - 1):
            path = root / split.provenance.sources[i]
            np.testing.assert_array_equal(split.images[i], decode(path, path.read_bytes(), spec).pixels)
    split_file = next((tmp_path / "data" / "own" / "tumours").glob("split-*.csv"))
    assert "group,split" in split_file.read_text()


def test_given_splits_and_metadata_table(tmp_path):
    root = write_tree(tmp_path / "tree", patients=2, splits=("train", "val", "test"))
    train = open_split(folder_cfg(root), 32, tmp_path / "data", "train")
    val = open_split(folder_cfg(root), 32, tmp_path / "data", "val")
    assert len(train) == len(val) == 12 and train.images.shape[1:] == (32, 32)
    with open(train.provenance.metadata, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["source"] == "train/benign/be0/0.png" and rows[0]["label"] == "benign"
    assert rows[0]["group"] == "be0" and rows[0]["shape"] == "18x24" and len(rows[0]["blake2b"]) == 32


def test_manifest_with_groups_multilabel_extra_columns_and_parquet(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "m"
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
        label = ["edema", "effusion", "edema|effusion"][i % 3]
        rows.append({"path": f"img/{i}.png", "label": label, "group": f"pt{i // 2}", "age": str(40 + i)})
    import pandas as pd

    pd.DataFrame(rows).to_csv(folder / "m.csv", index=False)
    pd.DataFrame(rows).to_parquet(folder / "m.parquet")
    train, test = both(manifest_cfg(folder / "m.csv"), tmp_path / "data")
    assert train.multilabel and train.labels.shape[1] == 2 and train.images.shape[1:] == (28, 28, 3)
    assert set(train.provenance.groups).isdisjoint(test.provenance.groups)
    with open(test.provenance.metadata, newline="") as fh:
        first = next(csv.DictReader(fh))
    assert first["age"] and first["group"].startswith("pt")
    p_train = open_split(manifest_cfg(folder / "m.parquet", name="chest_pq"), 28, tmp_path / "data", "train")
    np.testing.assert_array_equal(p_train.labels, train.labels)


def test_dicom_tree_and_nifti_volumes(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("ct_a", "ct_b"):
        for p in range(3):
            write_dicom(tmp_path / "dcm" / c / f"p{p}" / "IM1", rng.integers(0, 4096, (30, 20)).astype(np.uint16))
            write_nifti(tmp_path / "nii" / c / f"p{p}.nii.gz", rng.normal(0, 1, (6, 7, 8)).astype(np.float32))
    train, test = both(folder_cfg(tmp_path / "dcm", name="ct"), tmp_path / "data")
    assert train.images.shape[1:] == (28, 28) and len(train) + len(test) == 6
    cfg = folder_cfg(tmp_path / "nii", name="vols", dims=3)
    vols = open_split(cfg, 28, tmp_path / "data", "train", volume_side=32)
    assert vols.images.shape[1:] == (32, 32, 32)  # ingested at 28³, resampled by the study's 3D path
    assert open_split(cfg, 28, tmp_path / "data", "train").images.shape[1:] == (28, 28, 28)


def test_gray_then_colour_makes_every_split_rgb(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 4 * 28 * 28 * 3)  # 4 items per chunk
    root = write_tree(tmp_path / "tree", patients=4)
    colour = root / "normal" / "no3" / "1.png"
    Image.fromarray(np.full((10, 10, 3), (200, 10, 10), np.uint8)).save(colour)
    train, test = both(folder_cfg(root), tmp_path / "data")
    assert train.images.shape[-1] == 3 and test.images.shape[-1] == 3
    split = train if "normal/no3/1.png" in train.provenance.sources else test
    i = split.provenance.sources.index("normal/no3/1.png")
    assert tuple(split.images[i][14, 14]) == (200, 10, 10)
    gray = split.images[0]
    assert (gray[..., 0] == gray[..., 1]).all()


def test_reused_while_unchanged_reingested_when_a_file_changes(tmp_path):
    root = write_tree(tmp_path / "tree")
    cfg, data = folder_cfg(root), tmp_path / "data"
    train, _ = both(cfg, data)
    folder = ingested_folder(train)
    stamp = (folder / "train_images.npy").stat().st_mtime_ns
    source = root / train.provenance.sources[0]
    os.utime(source, ns=(1, 1))  # touched, same bytes: hashed, found unchanged, reused
    again = open_split(cfg, 28, data, "train")
    assert (folder / "train_images.npy").stat().st_mtime_ns == stamp
    assert again.provenance.content_key == train.provenance.content_key
    Image.fromarray(np.full((18, 24), 255, np.uint8)).save(source)  # new bytes
    changed = open_split(cfg, 28, data, "train")
    assert changed.provenance.content_key != train.provenance.content_key
    assert changed.images[0].max() == 255 and changed.images[0][14, 14] == 255
    (root / "benign" / "be0" / "0.png").unlink()  # a removed file
    assert len(open_split(cfg, 28, data, "train")) + len(open_split(cfg, 28, data, "test")) == 23


def test_interrupted_ingestion_resumes_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 3 * 28 * 28 * 3)  # 3 items per chunk: 8 chunks of 24 files
    root = write_tree(tmp_path / "tree")
    calls = []
    real = ingest.decode_chunk

    def dying(paths, spec, limits):
        calls.append(len(paths))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(paths, spec, limits)

    monkeypatch.setattr(ingest, "decode_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        open_split(folder_cfg(root), 28, tmp_path / "data", "train")
    monkeypatch.setattr(
        ingest, "decode_chunk", lambda paths, spec, limits: calls.append(len(paths)) or real(paths, spec, limits)
    )
    calls.clear()
    resumed = open_split(folder_cfg(root), 28, tmp_path / "data", "train")
    assert sum(calls) == 24 - 9  # the three finished chunks were not decoded again
    fresh = open_split(folder_cfg(root, name="fresh"), 28, tmp_path / "other", "train")
    np.testing.assert_array_equal(resumed.images, fresh.images)
    np.testing.assert_array_equal(resumed.labels, fresh.labels)


def test_parallel_ingestion_equals_serial(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 5 * 28 * 28 * 3)
    root = write_tree(tmp_path / "tree")
    serial = open_split(folder_cfg(root), 28, tmp_path / "a", "train")
    parallel = open_split(folder_cfg(root, workers=2), 28, tmp_path / "b", "train")
    np.testing.assert_array_equal(serial.images, parallel.images)
    assert serial.provenance.sources == parallel.provenance.sources


# --- bad input --------------------------------------------------------------------------------------


def _bad_tree(tmp_path):
    root = write_tree(tmp_path / "tree")
    (root / "benign" / "be0" / "notes.txt").write_text("not an image")
    (root / "benign" / "be1" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "empty_class").mkdir()
    return root


def test_bad_files_are_all_listed_before_any_extraction(tmp_path):
    root = _bad_tree(tmp_path)
    with pytest.raises(DataError) as err:
        open_split(folder_cfg(root), 28, tmp_path / "data", "train")
    msg = str(err.value)
    assert "3 bad file(s)" in msg and "on_bad_file=skip" in msg
    assert "benign/be0/notes.txt: not a supported image" in msg
    assert "benign/be1/1.png: a truncated or damaged image" in msg
    assert "empty_class/: an empty class folder" in msg


def test_skip_leaves_bad_files_out_and_records_them(tmp_path):
    root = _bad_tree(tmp_path)
    train, test = both(folder_cfg(root, on_bad_file="skip"), tmp_path / "data")
    assert len(train) + len(test) == 23
    skipped = {s["path"] for s in train.provenance.skipped}
    assert skipped == {"benign/be0/notes.txt", "benign/be1/1.png", "empty_class/"}
    assert "benign/be1/1.png" in (ingested_folder(train) / "skipped.csv").read_text()
    assert "benign/be1/1.png" not in train.provenance.sources + test.provenance.sources


def test_manifest_bad_rows(tmp_path):
    folder = write_tree(tmp_path / "m", patients=2)
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(outside)
    rows = ["path,label,split"]
    files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*.png"))]
    rows += [f"{f},{f.split('/')[0]},{'test' if '/no1/' in f else 'train'}" for f in files]  # rows 2-13
    rows += ["benign/be0/0.png,normal,test"]  # row 14: a duplicate path
    (folder / "extra").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "extra" / "0.png")
    rows += ["missing.png,benign,test", "../outside.png,benign,test", f"{outside},benign,test", "extra/0.png,lynx,test"]
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        open_split(manifest_cfg(folder / "m.csv"), 28, tmp_path / "data", "train")
    msg = str(err.value)
    assert "missing.png (row 15): the file does not exist" in msg
    assert "../outside.png (row 16): a path that leaves the manifest's folder" in msg
    assert f"{outside} (row 17): an absolute path (set dataset.allow_absolute=true" in msg
    assert "benign/be0/0.png (row 14): the same file as row 2 (benign/be0/0.png): listed twice" in msg
    assert "label(s) ['lynx'] have no image in the database" in msg
    train = open_split(
        manifest_cfg(folder / "m.csv", allow_absolute=True, on_bad_file="skip"), 28, tmp_path / "d2", "test"
    )
    assert str(outside) in train.provenance.sources


@pytest.mark.parametrize(
    "cfg, message",
    [
        (Node(kind="folder", name="x", root="/nonexistent/tree"), "is not a folder"),
        (Node(kind="folder", name="../up", root="."), "dataset.name='../up'"),
        (Node(kind="folder", name=None, root="."), "needs a name"),
        (Node(kind="manifest", name="x"), "needs dataset.path"),
        (Node(kind="folder", name="x", root=".", fit="zoom"), "dataset.fit"),
        (Node(kind="folder", name="x", root=".", window=[40]), "dataset.window"),
        (Node(kind="folder", name="x", root=".", split={"fraction": 1.5}), "dataset.split.fraction"),
        (Node(kind="folder", name="x", root=".", on_bad_file="ignore"), "dataset.on_bad_file"),
        (Node(kind="dicomweb", name="x"), "dataset.kind"),
    ],
)
def test_config_errors_name_the_key(cfg, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        dataset_facts(cfg)


def test_manifest_without_label_column_and_mixed_splits(tmp_path):
    (tmp_path / "a.csv").write_text("path,class\nx.png,1\n")
    with pytest.raises(ConfigError, match=r"lacks the column\(s\) \['label'\]"):
        open_split(manifest_cfg(tmp_path / "a.csv"), 28, tmp_path / "data", "train")
    write_tree(tmp_path / "t", patients=1)
    (tmp_path / "t" / "b.csv").write_text("path,label,split\nbenign/be0/0.png,benign,train\nbenign/be0/1.png,benign,\n")
    with pytest.raises(DataError, match="some items have a split and some do not"):
        open_split(manifest_cfg(tmp_path / "t" / "b.csv"), 28, tmp_path / "data", "train")


def test_state_records_settings(tmp_path):
    train = open_split(folder_cfg(write_tree(tmp_path / "tree"), fit="crop"), 28, tmp_path / "data", "train")
    state = json.loads((ingested_folder(train) / "state.json").read_text())
    assert state["settings"]["fit"] == "crop" and state["counts"]["train"] == len(train)


def test_a_link_leaving_the_root_is_a_bad_file(tmp_path):
    root = write_tree(tmp_path / "tree", patients=2)
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(outside)
    (root / "benign" / "be0" / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"benign/be0/link.png: a link that leaves the root"):
        open_split(folder_cfg(root), 28, tmp_path / "data", "train")
