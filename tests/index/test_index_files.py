"""Index files are untrusted too: sizes and structure checked even under --no-verify, never a raw traceback."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbmir.index.files import BrokenIndexError, RowFile, open_index, sha256_file
from cbmir.index.generations import resolve
from cbmir.index.query import main as query_main


@pytest.fixture(scope="module")
def blood(tiny_index) -> Path:
    return tiny_index("dataset=bloodmnist", "size=64")


def _copy(blood: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = Path(shutil.copytree(blood, tmp_path / "copy"))
    return root, resolve(root)


def _relist(generation: Path, name: str) -> None:
    """Update the manifest's size and hash of ``name``, as someone covering a change would."""
    manifest = json.loads((generation / "manifest.json").read_text())
    path = generation / name
    manifest["files"][name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    (generation / "manifest.json").write_text(json.dumps(manifest))


def _truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)


@pytest.mark.parametrize("check", [True, False])
def test_truncated_files_are_refused_with_or_without_hashes(blood, tmp_path, check):
    root, gen = _copy(blood, tmp_path)
    _truncate(gen / "thumbs.npy", 5000)
    with pytest.raises(BrokenIndexError, match=r"thumbs.npy: changed \(5000 bytes, the manifest says \d+\)"):
        open_index(root, check=check)
    _relist(gen, "thumbs.npy")  # the manifest agrees with the truncated file: the .npy header does not
    with pytest.raises(BrokenIndexError, match=r"thumbs.npy is 5000 bytes, its header promises \d+"):
        open_index(root, check=check)


def test_truncated_faiss_index_and_pickled_labels_are_one_line_errors(blood, tmp_path):
    root, gen = _copy(blood, tmp_path)
    _truncate(gen / "faiss.index", 100)
    _relist(gen, "faiss.index")
    with pytest.raises(BrokenIndexError, match="faiss.index is not a readable FAISS index"):
        open_index(root, check=False)
    shutil.copy(resolve(blood) / "faiss.index", gen / "faiss.index")
    _relist(gen, "faiss.index")
    np.save(gen / "labels.npy", np.array([{"x": 1}] * 24, dtype=object), allow_pickle=True)
    _relist(gen, "labels.npy")
    for check in (True, False):
        with pytest.raises(BrokenIndexError, match=r"labels.npy holds Python objects \(a pickle\)"):
            open_index(root, check=check)
    np.save(gen / "labels.npy", np.zeros((24, 1), dtype=np.float64))
    _relist(gen, "labels.npy")
    with pytest.raises(BrokenIndexError, match="labels.npy: dtype float64, expected integer"):
        open_index(root)


def test_command_line_no_verify_gives_one_line(blood, tmp_path, capsys):
    root, gen = _copy(blood, tmp_path)
    np.save(gen / "embeddings.npy", np.zeros((24, 5), dtype=np.float32))
    _relist(gen, "embeddings.npy")
    query = tmp_path / "q.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(query)
    assert query_main([str(root), str(query), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbmir: error: index ") and "width 96/(5,), the manifest says 96" in err
    assert "Traceback" not in err


def test_a_file_truncated_after_opening_is_an_error_not_a_crash(blood, tmp_path):
    root, gen = _copy(blood, tmp_path)
    index = open_index(root)
    np.testing.assert_array_equal(index.thumbs[3], np.load(gen / "thumbs.npy")[3])
    np.testing.assert_array_equal(index.thumbs[[5, 1]], np.load(gen / "thumbs.npy")[[5, 1]])
    np.testing.assert_array_equal(np.asarray(index.embeddings), np.load(gen / "embeddings.npy"))
    _truncate(gen / "thumbs.npy", 2000)  # a memory map would SIGBUS the process on the next read
    with pytest.raises(BrokenIndexError, match="thumbs.npy was truncated after the index was opened"):
        index.thumbs[20]
    assert isinstance(index.thumbs, RowFile)


def test_items_csv_neutralises_formula_starts(tmp_path):
    from cbmir.index.files import read_items, write_items

    rows = [{"row": 0, "split": "train", "position": 0, "source": "=HYPERLINK(\"http://x\")", "label": "0",
             "label_name": "0 =1+1", "group": "@SUM(1)"},
            {"row": 1, "split": "train", "position": 1, "source": "=cmd|' /C calc'!A0", "label": "1",
             "label_name": "+1", "group": "-2"}]  # fmt: skip
    write_items(tmp_path / "items.csv", rows)
    back = read_items(tmp_path / "items.csv")
    assert [r["source"] for r in back] == ['\'=HYPERLINK("http://x")', "'=cmd|' /C calc'!A0"]
    assert [r["group"] for r in back] == ["'@SUM(1)", "'-2"] and back[1]["label_name"] == "'+1"
    assert back[0]["label_name"] == "0 =1+1"  # not at the start: no formula
    with open(tmp_path / "items.csv", newline="") as fh:
        assert next(csv.reader(fh))[-1] == "withheld"
