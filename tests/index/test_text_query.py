"""Query by words: an index of a vision-language model answers text and text + image queries; others refuse."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cbmir.index.build import build_index, compose_config
from cbmir.index.edit import add_items, remove_items
from cbmir.index.files import open_index
from cbmir.index.query import main
from cbmir.index.text_query import JOINT_EMBEDDINGS, TextRetriever
from cbmir.models.text import NoTextTowerError
from tests.helpers.config import base_overrides
from tests.helpers.text_fixtures import TINY_CLIP, TINY_CLIP_OVERRIDES, tiny_clip_registered

TEXT = "a photo of a neutrophil."


@pytest.fixture(scope="module")
def clip_index(data_dir, tmp_path_factory):
    """An index of the tiny CLIP (both towers from one seeded file) over the bloodmnist fixture at 28 px."""
    import open_clip

    root = tmp_path_factory.mktemp("text-index")
    with tiny_clip_registered(), torch.random.fork_rng():
        torch.manual_seed(5)
        weights = root / "open_clip_model.bin"
        torch.save(open_clip.create_model(TINY_CLIP, pretrained=None).state_dict(), weights)
        over = [*TINY_CLIP_OVERRIDES, f"model.weights={weights}", "dataset=bloodmnist"]
        folder = build_index(compose_config(base_overrides(data_dir, root / "out", tiny=False) + over))
        yield folder


@pytest.fixture(scope="module")
def text_retriever(clip_index):
    return TextRetriever(clip_index, device="cpu")


def test_the_index_stores_the_joint_space_vectors(clip_index, text_retriever):
    generation = open_index(clip_index).folder
    manifest = json.loads((generation / "manifest.json").read_text())
    assert JOINT_EMBEDDINGS in manifest["files"] and manifest["text"]["cell"].startswith("text/bloodmnist/28/")
    assert (manifest["protocol"], manifest["metric"]) == ("paper", "l2")  # the study's index is untouched
    assert len(manifest["text"]["probe_embedding"]) == 16  # the joint tower's answer to the synthetic probe
    joint = np.load(generation / JOINT_EMBEDDINGS)
    study = np.load(generation / "embeddings.npy")
    np.testing.assert_allclose(np.linalg.norm(joint, axis=1), 1, rtol=1e-5)
    # the study's vectors (normalize=false) are not unit length; after normalising, the same direction
    assert not np.allclose(np.linalg.norm(study, axis=1), 1)
    np.testing.assert_allclose(joint, study / np.linalg.norm(study, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_a_text_query_ranks_by_cosine_with_the_text_tower(text_retriever):
    answer = text_retriever.ask(TEXT, k=5)
    joint = np.asarray(text_retriever.vectors, dtype=np.float64)
    sims = joint @ text_retriever.tower.encode([TEXT])[0].astype(np.float64)
    expected = np.argsort(-sims, kind="stable")[:5]
    assert [n["row"] for n in answer.neighbours] == expected.tolist()
    np.testing.assert_allclose([n["distance"] for n in answer.neighbours], sims[expected], rtol=1e-5, atol=1e-6)
    assert set(answer.seconds) == {"text", "search"}


def test_text_weight_mixes_text_and_image(text_retriever, tmp_path):
    row = 7
    path = tmp_path / "item.png"
    Image.fromarray(np.asarray(text_retriever.index.images[row])).save(path)
    image = (path.name, path.read_bytes())
    alone = text_retriever.ask(TEXT, k=3, image=image, text_weight=0.0)
    assert alone.neighbours[0]["row"] == row and alone.neighbours[0]["distance"] == pytest.approx(1.0, abs=1e-5)
    only_text = text_retriever.ask(TEXT, k=3, image=image, text_weight=1.0)
    assert [n["row"] for n in only_text.neighbours] == [n["row"] for n in text_retriever.ask(TEXT, k=3).neighbours]
    half = text_retriever.ask(TEXT, k=3, image=image, text_weight=0.5)
    t = text_retriever.tower.encode([TEXT])[0].astype(np.float64)
    v = 0.5 * t + 0.5 * np.asarray(text_retriever.vectors[row], dtype=np.float64)
    sims = np.asarray(text_retriever.vectors, dtype=np.float64) @ (v / np.linalg.norm(v))
    assert [n["row"] for n in half.neighbours] == np.argsort(-sims, kind="stable")[:3].tolist()
    assert "text weight 0.5" in half.name


def test_command_line_text_json_gallery(clip_index, tmp_path, capsys):
    gallery = tmp_path / "g.png"
    assert main([str(clip_index), "--text", TEXT, "--json", "--gallery", str(gallery), "-k", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "cosine" and out["results"][0]["query"] == TEXT
    assert len(out["results"][0]["neighbours"]) == 4 and gallery.stat().st_size > 0
    assert main([str(clip_index), "--text", TEXT, "--text-weight", "2"]) == 2
    assert "cbmir: error: --text-weight must lie in [0, 1], got 2.0" in capsys.readouterr().err


def test_an_index_without_text_tower_refuses_text_in_one_line(tiny_index, capsys):
    folder = tiny_index("dataset=bloodmnist", "size=64")
    assert main([str(folder), "--text", TEXT]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cbmir: error: index ") and "\n" not in err
    assert "cannot answer text queries: model tiny_resnet has no text tower in cbmir" in err
    with pytest.raises(NoTextTowerError):
        TextRetriever(folder)


def test_add_and_remove_carry_the_joint_vectors(clip_index, text_retriever, tmp_path):
    """An added item gets its joint vector from the joint tower (checked on the probe); a removed one loses it."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(clip_index, folder, symlinks=True)
    before = np.asarray(open_index(folder).joint)
    row = 3
    path = tmp_path / "again.png"
    Image.fromarray(np.asarray(text_retriever.index.images[row])).save(path)
    name = text_retriever.index.items[row]["label_name"].split(" ", 1)[-1]
    add_items(folder, [path], label=name, device="cpu")
    grown = open_index(folder)
    assert grown.joint is not None and len(grown.joint) == len(before) + 1
    np.testing.assert_allclose(np.asarray(grown.joint[: len(before)]), before)
    np.testing.assert_allclose(grown.joint[len(before)], before[row], atol=1e-5)  # the same pixels, the same vector
    answer = TextRetriever(folder, device="cpu").ask(TEXT, k=len(before) + 1)
    assert {n["row"] for n in answer.neighbours} == set(range(len(before) + 1))
    remove_items(folder, rows=[len(before)])
    np.testing.assert_allclose(np.asarray(open_index(folder).joint), before)


def test_text_queries_take_filters(text_retriever):
    label = text_retriever.index.items[0]["label"]
    held = sum(it["label"] == label for it in text_retriever.index.items)
    answer = text_retriever.ask(TEXT, k=held + 5, where={"label": [label]})
    assert len(answer.neighbours) == held and {n["label"] for n in answer.neighbours} == {label}


@pytest.fixture(scope="module")
def text_client(clip_index):
    from fastapi.testclient import TestClient

    from cbmir.index.serve import create_app, open_served
    from cbmir.index.server.live import Live

    served = open_served(clip_index, check=True, device="cpu")
    assert served.text is not None and served.text.index is served.retriever.index  # one opened index, shared
    return TestClient(create_app(Live(served), k=4))


def test_the_page_searches_by_words(text_client, text_retriever):
    info = text_client.get("/api/info").json()
    assert info["text"] is True and info["text_missing"] is None
    assert 'id="text"' in text_client.get("/").text
    response = text_client.post("/api/query", data={"text": TEXT, "k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["by"] == "text" and body["query"] == TEXT and body["image"] is None
    expected = text_retriever.ask(TEXT, k=3)
    assert [n["row"] for n in body["neighbours"]] == [n["row"] for n in expected.neighbours]


def test_the_page_mixes_words_and_an_image_and_refuses_bad_weights(text_client, text_retriever):
    row = 7
    png = io.BytesIO()
    Image.fromarray(np.asarray(text_retriever.index.images[row])).save(png, format="PNG")
    files = {"file": ("item.png", png.getvalue())}
    response = text_client.post("/api/query", data={"text": TEXT, "text_weight": "0"}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == f"{TEXT} + item.png" and body["neighbours"][0]["row"] == row
    assert body["image"].startswith("data:image/png;base64,")
    bad = text_client.post("/api/query", data={"text": TEXT, "text_weight": "2"})
    assert bad.status_code == 400 and bad.json()["detail"] == "text_weight must be a number from 0 to 1 (got '2')"
    empty = text_client.post("/api/query", data={"k": "3"})
    assert empty.status_code == 400 and "no file" in empty.json()["detail"]
    crowded = text_client.post("/api/query", content="&".join(f"f{i}=1" for i in range(40)),
                               headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert crowded.status_code == 400 and crowded.json()["detail"] == "the form has more than 32 fields"
    long = text_client.post("/api/query", data={"text": "x" * 2000})
    assert long.status_code == 400 and "longer than 1024 bytes" in long.json()["detail"]


def test_an_image_only_index_says_why_it_has_no_words(tiny_index):
    from fastapi.testclient import TestClient

    from cbmir.index.serve import create_app, open_served
    from cbmir.index.server.live import Live

    folder = tiny_index("dataset=bloodmnist", "size=64")
    client = TestClient(create_app(Live(open_served(folder, check=True, device="cpu"))))
    info = client.get("/api/info").json()
    assert info["text"] is False and "model tiny_resnet has no text tower" in info["text_missing"]
    response = client.post("/api/query", data={"text": TEXT})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("no search by words here: this index cannot answer text queries")
