"""Faults that need a real process: SIGKILL at fixed points, two processes on one cell, Ctrl-C, and a soak.

Each test starts ``python -m cbmir.run`` (slow marker). Kill points come from ``CBMIR_FAULT``
(cbmir/faults.py), so the process dies exactly there, by a real SIGKILL or SIGINT.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cbmir.cell.run import run_cell
from cbmir.safety.locks import lock_path
from tests.helpers.config import ROOT, base_overrides, compose_config

pytestmark = pytest.mark.slow

CELL = ["dataset=bloodmnist", "size=28"]


def cli(*args: str, fault: str | None = None, popen: bool = False, timeout: int = 300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("CBMIR_FAULT", None)
    if fault:
        env["CBMIR_FAULT"] = fault
    cmd = [sys.executable, "-m", "cbmir.run", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(out: Path) -> dict[str, dict]:
    """Every finished cell: its metrics, neighbours, distances and embeddings."""
    cells = {}
    for path in sorted((out / "results").rglob("result.json")):
        r = json.loads(path.read_text())
        cells[str(path.parent.relative_to(out))] = {
            "metrics": r["metrics"],
            "neighbors": np.load(path.parent / "neighbors.npy", allow_pickle=False),
            "distances": np.load(path.parent / "distances.npy", allow_pickle=False),
            **{role: np.load(p, allow_pickle=False) for role, p in r["embeddings"].items()},
        }
    return cells


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, cell in want.items():
        for key, value in cell.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(got[name][key], value, err_msg=f"{name} {key}")
            else:
                assert got[name][key] == value, name


def leftovers(out: Path) -> list[str]:
    """What an interrupted run may leave: temp files, shard folders, lock files."""
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if ".tmp" in p.name or p.name.endswith((".shards", ".lock", ".break"))
    )


#: The soak's grid: six cells, two protocols sharing each dataset's embeddings (the gallery does not enter a snapshot).
GRID = ["dataset=bloodmnist,breastmnist,chestmnist", "protocol=paper,standard", "gallery=false"]


@pytest.fixture(scope="module")
def clean_sweep(data_dir, tmp_path_factory) -> dict:
    """An uninterrupted sweep of :data:`GRID`, run once: the reference of every test here."""
    out = tmp_path_factory.mktemp("clean") / "out"
    proc = cli("-m", *base_overrides(data_dir, out), *GRID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return snapshot(out)


@pytest.fixture(scope="module")
def clean_cell(clean_sweep) -> dict:
    """CELL as an uninterrupted run computes it: its cell of the clean sweep."""
    name = "results/paper/bloodmnist/28/tiny_resnet"
    return {name: clean_sweep[name]}


@pytest.mark.parametrize(
    "fault, left_behind, cached",
    [
        # 24 database images, batches of 8: dies after the 2nd batch of extraction
        ("after_batch:2", "database.shards", {"database": False, "query": False}),
        # the database is merged into its temp file, not yet renamed: no entry, no sidecar
        ("merge:1", "database.tmp", {"database": False, "query": False}),
        # both entries sealed, neighbours written, result.json not
        ("before_result:1", "neighbors", {"database": True, "query": True}),
    ],
)
def test_sigkill_then_rerun_equals_an_uninterrupted_run(
    data_dir, tmp_path, caplog, clean_cell, fault, left_behind, cached
):
    out = tmp_path / "out"
    killed = cli(*base_overrides(data_dir, out), *CELL, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    cell = out / "results" / "paper" / "bloodmnist" / "28" / "tiny_resnet"
    assert not (cell / "result.json").exists(), "a killed cell must not look finished"
    assert lock_path(cell).exists()  # the dead process's lock, to be broken as stale
    cache = out / "cache" / "embeddings" / "tiny_resnet"
    sealed = sorted(p.name for p in cache.glob("*.json"))
    if left_behind == "database.shards":
        assert list(cache.glob("*_train_*.shards/rank0.f32")) and not sealed
    elif left_behind == "database.tmp":
        assert list(cache.glob("*_train_*.npy.tmp.npy")) and not sealed
    else:
        assert (cell / "neighbors.npy").exists() and len(sealed) == 2

    with caplog.at_level(logging.WARNING, logger="cbmir"):  # the rerun in-process: the killed run is the subject
        result = run_cell(compose_config([*base_overrides(data_dir, out), *CELL]))
    assert "breaking stale lock" in caplog.text
    assert result["cached"] == cached == json.loads((cell / "result.json").read_text())["cached"]
    assert_same(snapshot(out), clean_cell)
    assert leftovers(out) == []


def test_two_processes_on_one_cell_never_write_together(data_dir, tmp_path, clean_cell):
    """One process computes the cell; a second one refuses (lock_wait=0), a third waits and then reuses it."""
    out = tmp_path / "out"
    args = [*base_overrides(data_dir, out), *CELL]
    first = cli(*args, popen=True)
    lock = lock_path(out / "results" / "paper" / "bloodmnist" / "28" / "tiny_resnet")
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)  # hold the first one mid-cell, its lock taken
    try:
        assert lock.exists(), "the first process finished before it could be held"
        waiter = cli(*args, popen=True)  # lock_wait=null: waits while the holder lives
        second = cli(*args, "lock_wait=0")  # started alongside the waiter: both meet the held lock
        assert second.returncode == 2
        assert f"is being computed by process {first.pid}" in second.stderr
        waited = []
        for line in waiter.stdout:  # the waiter says it waits for the lock (cbmir.safety.locks) before it gets it
            waited.append(line)
            if f"waiting for {lock}" in line:
                break
        assert waiter.poll() is None, "the default must wait while the holder lives: " + "".join(waited)[-3000:]
    finally:
        os.kill(first.pid, signal.SIGCONT)
    computed = first.stdout.read()
    assert first.wait(timeout=300) == 0, computed[-3000:]
    reused = "".join(waited) + waiter.stdout.read()
    assert waiter.wait(timeout=300) == 0, reused[-3000:]
    # the cell ran once: the first one extracted and evaluated, the waiter took the first one's result
    assert "mAP@5" in computed and "finished already" in reused and "mAP@5" not in reused
    assert len(list((out / "cache" / "embeddings").rglob("*.npy"))) == 2
    assert_same(snapshot(out), clean_cell)
    assert leftovers(out) == []


def test_two_processes_started_together(data_dir, tmp_path, clean_cell):
    out = tmp_path / "out"
    args = [*base_overrides(data_dir, out), *CELL, "overwrite=true"]
    procs = [cli(*args, popen=True) for _ in range(2)]
    outputs = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _ in outputs)
    # one computes; the other waits for its lock and then recomputes (overwrite=true), never alongside it
    assert codes == [0, 0], outputs
    for _, text in outputs:
        assert "Traceback" not in text, text[-3000:]
    assert_same(snapshot(out), clean_cell)
    assert leftovers(out) == []


def test_ctrl_c_in_a_sweep(data_dir, tmp_path):
    out = tmp_path / "out"
    sweep = ["-m", *base_overrides(data_dir, out), "dataset=bloodmnist,breastmnist,chestmnist"]
    # bloodmnist is 3 + 2 batches; the SIGINT comes at breastmnist's 2nd batch
    proc = cli(*sweep, fault="after_batch:7:int")
    assert proc.returncode == 130, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "sweep interrupted by Ctrl-C: 1 cells ok, 0 skipped, 0 failed, 1 interrupted, 1 not run" in text
    assert "INTERRUPTED paper/breastmnist/28/tiny_resnet" in text
    assert "NOT RUN paper/chestmnist/28/tiny_resnet" in text
    assert [p.parent.parent.parent.name for p in (out / "results").rglob("result.json")] == ["bloodmnist"]
    assert not [p for p in (out / "cache").rglob("*.tmp*")]
    again = cli(*sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished already" in again.stdout and "sweep: 3 cells ok, 0 skipped, 0 failed" in again.stdout


def test_soak_random_faults_until_done(data_dir, tmp_path, clean_sweep):
    """Six cells (two protocols share embeddings) killed at random seeded points, rerun until done = a clean sweep."""
    out = tmp_path / "out"
    rng = random.Random(14)
    points = ["after_batch", "merge", "before_result", "after_cell"]
    history = []
    for attempt in range(8):
        point = rng.choice(points)
        fault = f"{point}:{rng.randint(1, 12 if point == 'after_batch' else 3)}" if attempt < 3 else None
        proc = cli("-m", *base_overrides(data_dir, out), *GRID, fault=fault)
        history.append((fault, proc.returncode))
        if proc.returncode == 0 and "sweep: 6 cells ok" in proc.stdout:
            break
        assert proc.returncode == -signal.SIGKILL, (history, proc.stdout[-3000:])
    assert history[-1][1] == 0, history
    assert sum(code == -signal.SIGKILL for _, code in history) >= 2, history
    assert_same(snapshot(out), clean_sweep)
    assert leftovers(out) == []
