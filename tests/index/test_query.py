"""Querying an index: a database image finds itself first, the label vote, refusals, the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbmir.index.build import build_index, compose_config
from cbmir.index.files import IndexMismatchError
from cbmir.index.generations import resolve
from cbmir.index.query import main
from cbmir.index.retrieve import Retriever, suggest_label, upload_name
from tests.helpers.index_fixtures import own_overrides, write_own_folder


@pytest.fixture(scope="module")
def blood(tiny_index) -> Path:
    return tiny_index("dataset=bloodmnist", "size=64")


@pytest.fixture(scope="module")
def retriever(blood) -> Retriever:
    return Retriever(blood, device="cpu")


def item_png(retriever: Retriever, row: int, folder: Path) -> Path:
    path = folder / f"item{row}.png"
    Image.fromarray(np.asarray(retriever.index.images[row])).save(path)
    return path


def test_a_database_image_finds_itself_first(retriever, tmp_path):
    for row in (0, 7, 19):
        path = item_png(retriever, row, tmp_path)
        answer = retriever.query(path.name, path.read_bytes(), k=5)
        first = answer.neighbours[0]
        assert first["row"] == row and first["rank"] == 1
        assert first["distance"] < 1e-6 * max(1.0, answer.neighbours[1]["distance"])
        # the query was embedded as the evaluation embedded the item
        vector = retriever.embedder.embed(answer.pixels[None])[0]
        np.testing.assert_allclose(vector, retriever.index.embeddings[row], rtol=1e-4, atol=1e-5)
        assert [n["rank"] for n in answer.neighbours] == [1, 2, 3, 4, 5]
        distances = [n["distance"] for n in answer.neighbours]
        assert distances == sorted(distances)
        assert answer.vote["label"] == retriever.index.items[row]["label"]  # the fixture's classes are separable
        assert set(answer.seconds) == {"decode", "embed", "search"}


def test_label_vote_majority_share_and_nearest_tie():
    labels = np.array([[2], [1], [1], [2], [0]])
    assert suggest_label(labels) == (0, 2)  # 1 and 2 tie at two votes: the nearest holder (rank 1, label 2) wins
    assert suggest_label(np.array([[3], [1], [1], [1], [3]])) == (1, 3)
    multi = np.array([[0, 1], [1, 0], [0, 1]])
    assert suggest_label(multi) == (0, 2)


def test_upload_names_sniff_the_format():
    assert upload_name("x.PNG", b"") == "x.PNG"
    assert upload_name("../../etc/passwd", b"\x89PNG\r\n\x1a\n....") == "passwd.png"
    assert upload_name("scan", b"\0" * 128 + b"DICM") == "scan.dcm"
    from cbmir.data.decode import BadFile

    with pytest.raises(BadFile, match="not a supported image"):
        upload_name("notes.txt", b"hello")


def test_another_model_is_refused(blood):
    with pytest.raises(IndexMismatchError, match="tiny_resnet embeddings; it cannot be queried with vgg19"):
        Retriever(blood, model="vgg19")
    other = dict(_manifest(blood)["model_config"])
    other.update(arch="test_efficientnet.r160_in1k", dim=None, name="tiny_effnet")
    with pytest.raises(IndexMismatchError, match="An index answers only queries embedded by its own model"):
        Retriever(blood, model_config=other)


def test_other_weights_under_the_same_name_are_refused(blood, tmp_path):
    import shutil

    copy = shutil.copytree(blood, tmp_path / "copy")
    manifest = _manifest(copy)
    manifest["seed"] = 1  # random weights of another seed: same name and identity, other network
    (resolve(copy) / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="does not reproduce the index's embeddings"):
        Retriever(copy)


def _manifest(folder: Path) -> dict:
    return json.loads((resolve(folder) / "manifest.json").read_text())


def test_command_line_table_json_gallery_and_errors(retriever, blood, tmp_path, capsys):
    queries = tmp_path / "queries"
    queries.mkdir()
    item_png(retriever, 4, queries)
    Image.fromarray(np.asarray(retriever.index.images[9])).save(queries / "item9.jpg", quality=95)
    (queries / "notes.txt").write_text("not an image")  # not listed from a folder
    assert main([str(blood), str(queries), "-k", "3", "--gallery", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert "tiny_resnet · bloodmnist · 64 px · 24 items" in out
    assert "suggested label:" in out and "bloodmnist_64.npz:train[4]" in out
    picture = np.asarray(Image.open(tmp_path / "g.png"))
    assert picture.shape[0] > 150 and picture.shape[1] > 300

    assert main([str(blood), str(queries / "item4.png"), "--json", "-k", "2"]) == 0
    body = json.loads(capsys.readouterr().out)
    (answer,) = body["results"]
    assert body["model"] == "tiny_resnet" and body["metric"] == "l2"
    assert answer["neighbours"][0]["row"] == 4 and len(answer["neighbours"]) == 2
    assert 0 < answer["vote"]["share"] <= 1

    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    assert main([str(blood), str(bad), str(queries / "item4.png")]) == 1
    captured = capsys.readouterr()
    assert f"cbmir: error: {bad}: not a readable image" in captured.err and "train[4]" in captured.out

    assert main([str(blood), str(bad), "--model", "vgg19"]) == 2
    assert "it cannot be queried with vgg19" in capsys.readouterr().err


def test_own_data_dicom_and_png_sources_find_themselves(tmp_path):
    source = write_own_folder(tmp_path / "src")
    folder = build_index(compose_config([*own_overrides(source, tmp_path / "out"), "index.privacy=plain"]))
    retriever = Retriever(folder, device="cpu")
    for name in ("train/benign/benign2.dcm", "train/malignant/malignant1.png", "train/normal/normal5.dcm"):
        path = source / name
        answer = retriever.query(path.name, path.read_bytes(), k=3)
        assert answer.neighbours[0]["source"] == name
        assert answer.vote["label_name"].endswith(name.split("/")[1])


def test_filters_act_inside_the_search_so_k_results_come_back(retriever, tmp_path, capsys):
    index = retriever.index
    labels = index.labels[:, 0]
    query_row = 0
    other = int(next(v for v in labels if v != labels[query_row]))
    name = index.class_names[str(other)]
    allowed = np.flatnonzero(labels == other)
    assert len(allowed) <= len(index) // 2  # most items are filtered out
    vector = np.asarray(index.embeddings[query_row])[None]
    for where in ({"label": [name]}, {"label": [str(other)], "split": ["database"]}, {"label": f"{other} {name}"}):
        d, rows = retriever.search(vector, 5, where)
        assert len(rows[0]) == min(5, len(allowed)) and set(rows[0]) <= set(allowed)
        exact = ((np.asarray(index.embeddings)[allowed] - vector) ** 2).sum(1)
        np.testing.assert_array_equal(rows[0], allowed[np.argsort(exact, kind="stable")[: len(rows[0])]])
        np.testing.assert_allclose(d[0], np.sort(exact)[: len(rows[0])], rtol=1e-4, atol=1e-4)
    # two values of one column are alternatives; columns combine
    d, rows = retriever.search(vector, 24, {"label": [str(other), str(labels[query_row])]})
    assert set(rows[0]) == set(np.flatnonzero((labels == other) | (labels == labels[query_row])))
    path = item_png(retriever, query_row, tmp_path)
    assert main([str(retriever.index.root), str(path), "--json", "-k", "3", "--where", f"label={name}"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [n["label"] for n in body["results"][0]["neighbours"]] == [str(other)] * 3
    refusals = {"colour=red": "cannot filter on 'colour'", "label=unicorn": "no item has label=unicorn"}
    refusals |= {"split=validation": "no item has split=validation", "label": "expected COLUMN=VALUE"}
    for bad, said in refusals.items():
        assert main([str(retriever.index.root), str(path), "--where", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cbmir: error: ") and said in err and err.count("\n") == 1
