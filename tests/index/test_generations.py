"""Growing and shrinking an index: generations switched atomically, adds and removes equal to a fresh build."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbmir.index import generations as gens
from cbmir.index.build import build_index, compose_config, main
from cbmir.index.edit import add_items, remove_items
from cbmir.index.files import open_index, sha256_file, verify
from cbmir.index.privacy import Privacy, load_key
from cbmir.index.retrieve import QueryEmbedder, Retriever
from tests.helpers.config import ROOT
from tests.helpers.index_fixtures import own_overrides, write_own_folder
from tests.helpers.medmnist_fixtures import class_images


def _png(path: Path, label: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = class_images(np.array([label]), 40, rgb=False, rng=np.random.default_rng(seed))[0]
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(dataset root, output folder, index folder): the tiny own folder plus a patient folder, all splits indexed."""
    base = tmp_path_factory.mktemp("grow")
    src = write_own_folder(base / "src")
    for i in range(2):
        _png(src / "train" / "benign" / "patient_x" / f"scan{i}.png", 0, 100 + i)
    out = base / "out"
    folder = build_index(compose_config([*own_overrides(src, out), "index.splits=all", f"index.dir={base / 'idx'}"]))
    return src, out, folder


def _copy(own: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the dataset and of its index, the copy's manifest pointing at the copied dataset."""
    src, _, folder = own
    work = Path(shutil.copytree(src, tmp_path / "src"))
    idx = Path(shutil.copytree(folder, tmp_path / "idx"))
    manifest = gens.resolve(idx) / "manifest.json"
    manifest.write_text(manifest.read_text().replace(str(src.resolve()), str(work.resolve())))
    return work, idx


def _key(out: Path) -> Privacy:
    return Privacy("pseudonymous", load_key(out / "keys" / "index.key", create=False))


def test_pointer_switch_prune_and_old_single_folders(tmp_path):
    root = tmp_path / "idx"
    for _ in range(3):
        partial = gens.next_partial(root)
        (partial / "manifest.json").write_text("{}")
        gens.commit(root, partial, keep=2)
    assert (root / "CURRENT").read_text() == "g000003\n" and gens.generations(root) == ["g000002", "g000003"]
    assert gens.resolve(root) == root / "g000003"
    # leftovers of a crashed writer (a partial, a finished generation never switched to) go with the next prune
    gens.next_partial(root)
    (root / "g000005").mkdir()
    assert sorted(gens.prune(root, keep=2)) == ["g000004.partial", "g000005"]
    (root / "CURRENT").write_text("../../etc")
    with pytest.raises(gens.GenerationError, match="not a generation folder"):
        gens.resolve(root)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text("{}")
    assert gens.resolve(legacy) == legacy
    gens.adopt_legacy(legacy)
    assert gens.resolve(legacy) == legacy / "g000001" and (legacy / "g000001" / "manifest.json").is_file()


def _neighbours(index, vectors: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
    d, rows = index.faiss_index.search(np.ascontiguousarray(vectors), len(index))
    return [[index.items[r]["source"] for r in row] for row in rows], d


def _bytes_of(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.slow
def test_adds_and_removes_equal_a_fresh_build_and_leave_no_removed_byte(own, tmp_path, monkeypatch):
    from cbmir.errors import DataError

    work, idx = _copy(own, tmp_path)
    out = own[1]
    embedded = []
    real = QueryEmbedder.embed
    monkeypatch.setattr(QueryEmbedder, "embed", lambda self, x: embedded.append(len(x)) or real(self, x))
    new = [_png(work / "train" / "benign" / "new0.png", 0, 7), _png(work / "test" / "normal" / "new1.png", 2, 8)]
    done = add_items(idx, [new[0], work / "test" / "normal"])  # the folder holds normal0, normal1 and new1
    assert done["embedded"] == 2 and embedded == [1, 2]  # the probe check, then only the two new items
    with pytest.raises(DataError, match="every given item is in the index already"):
        add_items(idx, [work / "train" / "malignant" / "malignant0.png", new[1]])
    before = open_index(idx)
    assert len(before) == 28 and before.generation == "g000002" and gens.generations(idx) == ["g000001", "g000002"]
    # remove one file by a glob over source paths and one patient by the group's original name (with the key)
    key = _key(out)
    targets = (key.source("train/malignant/malignant1.png"), key.group("patient_x"))
    gone = [r for r, it in enumerate(before.items) if it["source"] == targets[0] or it["group"] == targets[1]]
    assert len(gone) == 3
    traces = [np.asarray(before.embeddings[r]).tobytes() for r in gone]
    traces += [np.asarray(before.thumbs[r]).tobytes() for r in gone]
    traces += [np.asarray(before.images[r]).tobytes() for r in gone]
    traces += [before.items[r][c].encode() for r in gone for c in ("source", "group")]
    assert remove_items(idx, sources=["train/malignant/malignant1.*"])["removed"] == 1
    assert remove_items(idx, groups=["patient_x"])["removed"] == 2
    after = open_index(idx)
    assert len(after) == 25 and gens.generations(idx) == ["g000004"]  # a remove keeps no older generation
    everything = _bytes_of(idx)
    assert [t for t in traces if t in everything] == []
    # a fresh build over the same files gives the same neighbours at the same distances
    (work / "train" / "malignant" / "malignant1.png").unlink()
    shutil.rmtree(work / "train" / "benign" / "patient_x")
    fresh_cfg = [*own_overrides(work, tmp_path / "out"), "index.splits=all", f"index.dir={tmp_path / 'fresh'}"]
    fresh = open_index(build_index(compose_config([*fresh_cfg, f"index.key_file={out / 'keys' / 'index.key'}"])))
    columns = ("source", "group", "split", "label", "label_name")
    assert sorted(tuple(it[c] for c in columns) for it in fresh.items) == sorted(
        tuple(it[c] for c in columns) for it in after.items
    )
    queries = np.asarray(fresh.embeddings)
    (got, d_got), (want, d_want) = _neighbours(after, queries), _neighbours(fresh, queries)
    assert got == want
    np.testing.assert_allclose(d_got, d_want, rtol=1e-4, atol=1e-4)


def test_selections_matching_nothing_exit_2_naming_them(own, tmp_path, capsys):
    _, idx = _copy(own, tmp_path)
    assert main(["remove", str(idx), "--source", "train/nobody/*"]) == 2
    assert "--source train/nobody/* matches no item" in capsys.readouterr().err
    assert main(["remove", str(idx), "--row", "3", "999"]) == 2
    assert "--row 999: no such row (the index has rows 0..25)" in capsys.readouterr().err
    assert main(["remove", str(idx), "--group", "Doe^John"]) == 2
    assert "--group Doe^John matches no item" in capsys.readouterr().err
    assert gens.generations(idx) == ["g000001"]  # nothing was written
    # a group's pseudonym works without the key; rows by number
    pseudonym = _key(own[1]).group("patient_x")
    assert main(["remove", str(idx), "--group", pseudonym, "--keep", "2"]) == 0
    assert main(["remove", str(idx), "--row", "0", "1"]) == 0
    assert len(open_index(idx)) == 22 and gens.generations(idx) == ["g000003"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["index_partial", "index_switch"])
def test_a_killed_add_leaves_the_previous_generation_whole(own, tmp_path, point):
    work, idx = _copy(own, tmp_path)
    new = _png(work / "train" / "normal" / "late.png", 2, 9)
    env = {**os.environ, "CBMIR_FAULT": f"{point}:1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "cbmir.index", "add", str(idx), str(new)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftover = "g000002.partial" if point == "index_partial" else "g000002"
    assert (idx / leftover).is_dir()  # the dead writer's work is there, but not current
    index = open_index(idx)
    assert index.generation == "g000001" and len(index) == 26
    verify(index.folder, index.manifest)
    # the next writer takes the dead writer's lock, finishes, and clears its leftovers
    assert add_items(idx, [new])["embedded"] == 1
    assert gens.generations(idx) == ["g000001", "g000003"] and not (idx / "g000002.partial").exists()
    assert len(open_index(idx)) == 27


def test_an_index_from_before_generations_opens_and_its_first_change_adopts_it(
    tiny_index, data_dir, tmp_path_factory, tmp_path
):
    blood = tiny_index("dataset=bloodmnist", "size=64")
    old = Path(shutil.copytree(gens.resolve(blood), tmp_path / "old"))  # one folder, no CURRENT: the old layout
    manifest = json.loads((old / "manifest.json").read_text())
    np.save(old / "probe.npy", np.load(old / "images.npy")[0])  # the old probe: item 0's own pixels
    manifest["files"]["probe.npy"] = {"bytes": (old / "probe.npy").stat().st_size,
                                      "sha256": sha256_file(old / "probe.npy")}  # fmt: skip
    manifest.update(probe_row=0, probe_embedding=None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    retriever = Retriever(old, device="cpu")  # checked against item 0's stored vector, as before
    assert retriever.index.root is None and len(retriever.index) == 24
    item0 = np.load(old / "images.npy")[0].tobytes()
    assert remove_items(old, rows=[0])["removed"] == 1
    assert (old / "CURRENT").read_text().strip() == "g000002" and gens.generations(old) == ["g000002"]
    assert not any(p.is_file() and p.name != "CURRENT" for p in old.iterdir())
    index = open_index(old)
    assert len(index) == 23 and index.manifest["probe_row"] is None
    assert item0 not in (index.folder / "probe.npy").read_bytes()  # the removed item's pixels left with it
    Retriever(old, device="cpu")  # the new synthetic probe checks the model


def test_selection_rules_under_plain_and_pseudonymous_privacy(tmp_path):
    from types import SimpleNamespace

    from cbmir.errors import DataError
    from cbmir.index.edit import select

    items = [{"source": "train/a/Doe/1.png", "group": "Doe"}, {"source": "train/a/Roe/2.png", "group": "Roe"},
             {"source": "test/b/3.png", "group": "test/b/3.png"}]  # fmt: skip

    class Index(SimpleNamespace):
        def __len__(self) -> int:
            return len(self.items)

    index = Index(items=items, folder=tmp_path / "g000001", manifest={"source": {"root": None}})
    assert select(index, Privacy("plain"), sources=["train/*"]).tolist() == [True, True, False]
    assert select(index, Privacy("plain"), groups=["Roe"], rows=[2]).tolist() == [False, True, True]
    key = Privacy("pseudonymous", b"k" * 32)
    hidden = [{"source": key.source(it["source"]), "group": key.group(it["group"])} for it in items]
    root = tmp_path / "root"
    for it in items:
        (root / it["source"]).parent.mkdir(parents=True, exist_ok=True)
        (root / it["source"]).write_bytes(b"x")
    index.items, index.manifest = hidden, {"source": {"root": str(root)}}
    assert select(index, key, sources=["train/a/*/*.png"]).tolist() == [True, True, False]  # matched on disk
    assert select(index, key, groups=["Doe", hidden[1]["group"]]).tolist() == [True, True, False]
    assert select(index, Privacy("pseudonymous"), groups=[hidden[2]["group"]]).tolist() == [False, False, True]
    with pytest.raises(DataError, match="--group Doe matches no item"):
        select(index, Privacy("pseudonymous"), groups=["Doe"])  # without the key only the pseudonym works
