"""Faults injected in-process: damaged caches and data files, a full disk, NaN embeddings, CUDA OOM, cell locks.

Each test really breaks something (bytes on disk, an ``OSError`` from the write path, NaN rows from the
forward, an out-of-memory error from the backbone) and checks what cbmir does about it. The kills,
concurrent processes and Ctrl-C are in ``test_faults_process.py``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cbmir.cell import run as cell
from cbmir.cell.extract import EmbeddingModule
from cbmir.cell.run import run_cell
from cbmir.errors import CbmirError, DiskFullError, LockBusyError, NonFiniteEmbeddingError
from cbmir.layout import cell_dir
from cbmir.safety import faults, files
from cbmir.safety.locks import FileLock, lock_path


@pytest.fixture(autouse=True)
def _fresh_fault_counts(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()
    yield
    faults.reset()


def embeddings(result: dict) -> dict[str, np.ndarray]:
    return {role: np.load(path, allow_pickle=False) for role, path in result["embeddings"].items()}


def assert_same_result(got: dict, want: dict) -> None:
    """Same metrics, neighbours and embeddings as an undisturbed run."""
    assert got["metrics"] == want["metrics"]
    for role, array in embeddings(want).items():
        np.testing.assert_array_equal(embeddings(got)[role], array)


def leftovers(root: Path) -> list[Path]:
    """Anything an interrupted write or lock could leave: temp files, shards, locks."""
    return [
        p
        for p in root.rglob("*")
        if ".tmp" in p.name or p.suffix in (".shards", ".lock", ".break") or "rank0" in p.name
    ]


# -- damaged cache entries -------------------------------------------------------------------------------------


def _zero_rows(npy: Path) -> None:
    array = np.load(npy, mmap_mode="r+")
    array[:5] = 0
    array.flush()


def _truncate(npy: Path) -> None:
    with open(npy, "r+b") as fh:
        fh.truncate(npy.stat().st_size - 10)


def _flip_bit(npy: Path) -> None:
    data = bytearray(npy.read_bytes())
    data[-7] ^= 0x10
    npy.write_bytes(bytes(data))


def _drop_sidecar(npy: Path) -> None:
    npy.with_suffix(".json").unlink()


def _damage_sidecar(npy: Path) -> None:
    record = json.loads(npy.with_suffix(".json").read_text())
    record["file"]["nbytes"] += 1
    npy.with_suffix(".json").write_text(json.dumps(record))


@pytest.mark.parametrize("damage", [_zero_rows, _truncate, _flip_bit, _drop_sidecar, _damage_sidecar])
def test_damaged_cache_entry_is_recomputed_with_a_warning(cell_cfg, caplog, damage):
    clean = run_cell(cell_cfg())
    database = Path(clean["embeddings"]["database"])
    damage(database)
    with caplog.at_level(logging.WARNING, logger="cbmir"):
        again = run_cell(cell_cfg("overwrite=true"))
    assert any("are not reused" in r.getMessage() and database.name in r.getMessage() for r in caplog.records)
    assert again["cached"] == {"database": False, "query": True}
    assert_same_result(again, clean)
    # and the recomputed entry is sealed again: a third run reuses it
    third = run_cell(cell_cfg("overwrite=true"))
    assert third["cached"] == {"database": True, "query": True}


def test_sound_cache_entry_is_reused_silently(cell_cfg, caplog):
    run_cell(cell_cfg())
    with caplog.at_level(logging.WARNING, logger="cbmir"):
        again = run_cell(cell_cfg("overwrite=true"))
    assert again["cached"] == {"database": True, "query": True}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "not reused" in r.getMessage()]


def test_damaged_split_file_is_extracted_again(compose, data_dir, tmp_path, caplog):
    from tests.helpers.config import base_overrides

    own_data = tmp_path / "data"
    own_data.mkdir()
    shutil.copy(data_dir / "bloodmnist.npz", own_data)
    cfg = lambda *extra: compose(base_overrides(own_data, tmp_path / "out") + ["dataset=bloodmnist", *extra])  # noqa: E731
    clean = run_cell(cfg())
    images = own_data / "bloodmnist" / "train_images.npy"
    _flip_bit(images)
    with caplog.at_level(logging.WARNING, logger="cbmir"):
        again = run_cell(cfg("overwrite=true", "use_cache=false"))
    assert any("train_images.npy" in r.getMessage() and "extracting" in r.getMessage() for r in caplog.records)
    assert_same_result(again, clean)
    truncated = own_data / "bloodmnist" / "test_labels.npy"
    _truncate(truncated)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cbmir"):
        third = run_cell(cfg("overwrite=true"))
    assert any("test_labels.npy" in r.getMessage() for r in caplog.records)
    assert third["metrics"] == clean["metrics"]


# -- a full disk ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["rank0.f32", "_train_", "neighbors.npy", "per_query.npz", "result.json"])
def test_full_disk_names_the_file_and_leaves_nothing_finished(cell_cfg, monkeypatch, victim):
    """ENOSPC from the write path of each kind of file: a DiskFullError, no result, no sealed cache entry."""
    real_hit = faults.hit

    def no_space(point: str, where: str = "") -> None:
        if point == "write" and victim in Path(where).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
        real_hit(point, where)

    monkeypatch.setattr(faults, "hit", no_space)
    cfg = cell_cfg()
    with pytest.raises(DiskFullError) as caught:
        run_cell(cfg)
    message = str(caught.value)
    assert "no space left" in message and victim in message and "needs" in message and "free" in message
    out = Path(cfg.paths.output_dir)
    assert not (cell_dir(cfg) / "result.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    if victim in ("rank0.f32", "_train_"):  # during extraction: no cache entry is sealed
        assert not list((out / "cache").rglob("*_train_*.json"))
    monkeypatch.setattr(faults, "hit", real_hit)
    assert run_cell(cfg)["metrics"]  # space again: the rerun finishes


def test_too_little_space_fails_before_extraction(cell_cfg, monkeypatch):
    monkeypatch.setattr(files, "free_bytes", lambda path: 1000)
    cfg = cell_cfg()
    with pytest.raises(DiskFullError, match=r"needs 27\.6 KB, 1\.0 KB are free"):
        run_cell(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.f32"))


def test_enospc_fault_hook_raises_oserror(monkeypatch, tmp_path):
    monkeypatch.setenv(faults.ENV, "write:2:enospc")
    files.atomic_write_text(tmp_path / "a.txt", "x")
    with pytest.raises(DiskFullError, match="b.txt"):
        files.atomic_write_text(tmp_path / "b.txt", "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# -- NaN / Inf embeddings ------------------------------------------------------------------------------------


def _nan_forward(monkeypatch, *, only_under_autocast: bool = False) -> None:
    real = EmbeddingModule._forward

    def poisoned(self, images):
        out = real(self, images)
        if not only_under_autocast or torch.is_autocast_enabled("cpu"):
            out[:2] = float("nan")
            out[2, 0] = float("inf")
        return out

    monkeypatch.setattr(EmbeddingModule, "_forward", poisoned)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_nan_embeddings_fail_with_the_count_and_the_advice(cell_cfg, monkeypatch, precision):
    _nan_forward(monkeypatch)
    cfg = cell_cfg(f"precision={precision}")
    with pytest.raises(NonFiniteEmbeddingError) as caught:
        run_cell(cfg)
    # 24 database images in batches of 8: 3 rows of each batch are bad
    assert caught.value.bad_rows == 9 and "9 of 24 rows" in str(caught.value)
    advice = "run with precision=32-true" if precision != "32-true" else "check the model's weights"
    assert advice in str(caught.value)
    out = Path(cfg.paths.output_dir)
    assert not (cell_dir(cfg) / "result.json").exists()
    assert not list((out / "cache").rglob("*.json")), "a NaN entry must never be sealed"


def test_nan_under_auto_precision_falls_back_to_fp32(cell_cfg, monkeypatch, caplog):
    clean = run_cell(cell_cfg("precision=32-true"))
    _nan_forward(monkeypatch, only_under_autocast=True)
    monkeypatch.setattr(
        cell, "resolve_precision", lambda precision, trainer: "bf16-mixed" if precision == "auto" else "32-true"
    )
    with caplog.at_level(logging.WARNING, logger="cbmir"):
        result = run_cell(cell_cfg("precision=auto", "overwrite=true"))
    assert any("recomputing in fp32" in r.getMessage() for r in caplog.records)
    assert result["precision"] == "32-true"
    assert result["precision_fallback"] == {"from": "bf16-mixed", "bad_rows": 9}
    assert result["cached"] == {"database": True, "query": True}  # the fp32 entries of the clean run
    assert_same_result(result, clean)


def test_a_nan_cache_entry_is_never_searched(cell_cfg):
    """Even a sealed entry holding NaN (e.g. written by an older cbmir) stops the search."""
    from cbmir.cell.store import write_sidecar

    clean = run_cell(cell_cfg())
    database = Path(clean["embeddings"]["database"])
    array = np.load(database, mmap_mode="r+")
    array[3] = np.nan
    array.flush()
    del array
    fields = {k: v for k, v in json.loads(database.with_suffix(".json").read_text()).items()}
    fields.pop("file")
    fields.pop("cbmir_version")
    write_sidecar(database, fields)
    with pytest.raises(NonFiniteEmbeddingError, match="1 of 24 database embeddings"):
        run_cell(cell_cfg("overwrite=true"))


# -- CUDA out of memory --------------------------------------------------------------------------------------


def test_out_of_memory_halves_the_forward_batch(cell_cfg, monkeypatch, caplog):
    clean = run_cell(cell_cfg())
    monkeypatch.setenv(faults.ENV, "forward_over:3")  # a "GPU" that holds 3 images per forward pass
    with caplog.at_level(logging.WARNING, logger="cbmir"):
        result = run_cell(cell_cfg("overwrite=true", "use_cache=false"))
    halvings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert halvings == [
        "out of memory at a forward pass of 8 images; retrying with 4",
        "out of memory at a forward pass of 4 images; retrying with 2",
    ]
    assert result["metrics"] == clean["metrics"]
    for role, array in embeddings(clean).items():  # the same embeddings, computed 2 images at a time
        np.testing.assert_allclose(embeddings(result)[role], array, rtol=1e-5, atol=1e-6)


def test_out_of_memory_at_the_floor_fails_clearly(cell_cfg, monkeypatch):
    monkeypatch.setenv(faults.ENV, "forward_over:3")
    with pytest.raises(CbmirError, match=r"out of memory at a forward pass of 4 images \(min_forward_batch=4\)"):
        run_cell(cell_cfg("min_forward_batch=4"))


# -- locks ---------------------------------------------------------------------------------------------------


def test_busy_cell_is_reported_and_lock_wait_waits(cell_cfg):
    """The cell's lock held elsewhere: lock_wait=0 reports it at once, the default waits for the holder."""
    cfg = cell_cfg("lock_wait=0")
    holder = FileLock(lock_path(cell_dir(cfg))).acquire()
    with pytest.raises(LockBusyError, match=f"is being computed by process {os.getpid()} .* lock_wait=SECONDS"):
        run_cell(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.f32")), "the second process must not start extracting"
    threading.Timer(1.0, holder.release).start()
    t0 = time.monotonic()
    result = run_cell(cell_cfg())
    assert time.monotonic() - t0 >= 0.9
    assert result["metrics"] and not holder.path.exists()


def test_cache_entry_lock_is_waited_for_and_the_entry_reused(cell_cfg):
    """A second cell that needs an entry another cell is computing waits for it, then reuses it."""
    first = run_cell(cell_cfg())
    database = Path(first["embeddings"]["database"])
    entry_lock = FileLock(lock_path(database)).acquire()
    threading.Timer(1.0, entry_lock.release).start()
    t0 = time.monotonic()
    other = run_cell(cell_cfg("protocol.metric=cosine"))  # another cell (paper+cosine), the same embeddings
    assert time.monotonic() - t0 >= 0.9
    assert other["cached"] == {"database": True, "query": True}
    assert not leftovers(Path(first["embeddings"]["database"]).parents[2])
