"""An inverted-file index grows and shrinks through FAISS's own ids; recall and quantiser drift are re-measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbmir.index import approx
from cbmir.index.build import main
from cbmir.index.edit import add_items, remove_items
from cbmir.index.files import open_index
from cbmir.index.retrieve import Retriever


@pytest.fixture
def ivf(tiny_index, tmp_path) -> Path:
    """An IVF index of its own (this test changes it), over the session's shared bloodmnist cell."""
    settings = ("dataset=bloodmnist", "size=64", "index.faiss='IVF2,Flat'", "index.nprobe=2")
    return tiny_index(*settings, f"index.dir={tmp_path / 'ivf'}")


def test_ivf_adds_and_removes_through_faiss_ids(ivf, tmp_path, capsys):
    index = open_index(ivf)
    block = index.manifest["approximate"]
    assert block["factory"] == "IVF2,Flat" and block["nprobe"] == 2 and block["recall"] == 1.0  # all lists probed
    np.testing.assert_array_equal(index.ids, np.arange(24))
    name = index.class_names[str(int(index.labels[4, 0]))]
    files = []
    for row in (4, 9):
        files.append(tmp_path / f"new{row}.png")
        Image.fromarray(np.asarray(index.images[row])).save(files[-1])
    assert add_items(ivf, files, label=name)["embedded"] == 2
    grown = open_index(ivf)
    np.testing.assert_array_equal(grown.ids, np.arange(26))
    assert grown.faiss_index.ntotal == 26 and grown.manifest["approximate"]["recall"] == 1.0
    assert grown.manifest["approximate"]["at_build"] == block["quantiser"]  # the training's state is kept
    retriever = Retriever(ivf, device="cpu")
    answer = retriever.query(files[0].name, files[0].read_bytes(), k=3)
    assert {n["row"] for n in answer.neighbours[:2]} == {4, 24} and answer.neighbours[0]["distance"] < 1e-6
    assert remove_items(ivf, rows=[4, 24])["removed"] == 2
    shrunk = open_index(ivf)
    assert 4 not in shrunk.ids and 24 not in shrunk.ids and shrunk.faiss_index.ntotal == 24
    retriever = Retriever(ivf, device="cpu")
    d, rows = retriever.search(np.asarray(index.embeddings[4])[None], 24)
    assert sorted(rows[0]) == list(range(24))  # every remaining item, by its row in the new generation
    d, rows = retriever.search(np.asarray(index.embeddings[4])[None], 3, {"label": [name]})
    assert all(shrunk.items[r]["label_name"].endswith(name) for r in rows[0]) and len(rows[0]) == 3
    assert main(["info", str(ivf)]) == 0
    assert "approximate: recall@10 against exact 1.000" in capsys.readouterr().out


def test_drift_of_the_coarse_quantiser_advises_retraining():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 8)).astype(np.float32)
    index = approx.train(base, "l2", "IVF4,Flat", nprobe=1)
    ids = np.arange(400)
    start = approx.record(index, base, ids, "l2", None)
    assert start["advice"] == "" and start["at_build"] == start["quantiser"]
    similar = rng.normal(size=(100, 8)).astype(np.float32)
    grown = approx.added(index, similar, np.arange(400, 500), "l2")
    assert (
        approx.record(grown, np.concatenate([base, similar]), np.arange(500), "l2", start["at_build"])["advice"] == ""
    )
    shifted = rng.normal(loc=6.0, size=(400, 8)).astype(np.float32)  # a new scanner: far from every centroid
    drifted = approx.added(index, shifted, np.arange(400, 800), "l2")
    after = approx.record(drifted, np.concatenate([base, shifted]), np.arange(800), "l2", start["at_build"])
    assert after["advice"].startswith("retraining advisable (") and "mean distance to centroid" in after["advice"]
    assert after["recall"] < 1.0  # one list probed: the shifted items crowd into few lists


def test_only_inverted_files_are_accepted(data_dir, tmp_path, capsys):
    args = ["build", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}", "index.faiss=HNSW32"]
    assert main(args) == 2
    assert "index.faiss='HNSW32': an index grows and shrinks through FAISS's ids" in capsys.readouterr().err
