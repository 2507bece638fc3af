"""Query by words: an index of a vision-language model answers text and text + image queries; others refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cbmir.index.build import build_index, compose_config
from cbmir.index.query import main
from cbmir.index.text_query import JOINT_EMBEDDINGS, TextRetriever
from cbmir.models.text import NoTextTowerError
from tests.helpers.config import base_overrides
from tests.helpers.index_fixtures import build_tiny_index
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
    manifest = json.loads((clip_index / "manifest.json").read_text())
    assert JOINT_EMBEDDINGS in manifest["files"] and manifest["text"]["cell"].startswith("text/bloodmnist/28/")
    assert (manifest["protocol"], manifest["metric"]) == ("paper", "l2")  # the study's index is untouched
    joint = np.load(clip_index / JOINT_EMBEDDINGS)
    study = np.load(clip_index / "embeddings.npy")
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


def test_an_index_without_text_tower_refuses_text_in_one_line(data_dir, tmp_path_factory, capsys):
    folder = build_tiny_index(data_dir, tmp_path_factory.getbasetemp(), "dataset=bloodmnist", "size=64")
    assert main([str(folder), "--text", TEXT]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cbmir: error: index ") and "\n" not in err
    assert "cannot answer text queries: model tiny_resnet has no text tower in cbmir" in err
    with pytest.raises(NoTextTowerError):
        TextRetriever(folder)
