"""Cross-process locks with real processes: one does the work while the others wait, and a killed holder is
taken over (at once on the same host; after the heartbeat stops on another)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cbmir.safety.locks import FileLock, LockTimeout
from tests.helpers.config import ROOT
from tests.helpers.medmnist_fixtures import write_medmnist


def python(code: str, *, stale: float = 60.0, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CBMIR_LOCK_STALE_S": str(stale), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True, **popen)


WORKER = """
    import json, os, sys, time
    from pathlib import Path
    from cbmir.safety.locks import FileLock
    lock, log, done = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    start = float(sys.argv[4])
    time.sleep(max(0.0, start - time.time()))  # all processes leave the line together
    with FileLock(lock, poll=0.01):
        entered = time.time()
        worked = not done.exists()
        if worked:
            time.sleep(0.3)
            done.write_text("x")
        with open(log, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "in": entered, "out": time.time(), "worked": worked}) + "\\n")
"""


def test_racing_processes_do_the_work_once(tmp_path):
    start = time.time() + 2.0
    args = [str(tmp_path / "x.lock"), str(tmp_path / "log"), str(tmp_path / "done"), str(start)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WORKER), *args], env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        for _ in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    entries = sorted((json.loads(line) for line in (tmp_path / "log").read_text().splitlines()), key=lambda e: e["in"])
    assert len(entries) == 4 and sum(e["worked"] for e in entries) == 1 and entries[0]["worked"]
    for before, after in zip(entries, entries[1:]):
        assert before["out"] <= after["in"]  # never two holders at once
    assert not (tmp_path / "x.lock").exists()


HOLDER = """
    import socket, sys, time
    {patch}
    from cbmir.safety.locks import FileLock
    lock = FileLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
"""


def start_holder(path: Path, **kwargs) -> subprocess.Popen:
    patch = "socket.gethostname = lambda: 'another-node'" if kwargs.get("other_host") else ""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CBMIR_LOCK_STALE_S": str(kwargs.get("stale", 60.0))}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER.format(patch=patch)), str(path)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_killed_holder_on_this_host_is_taken_over_at_once(tmp_path):
    path = tmp_path / "x.lock"
    holder = start_holder(path)
    with pytest.raises(LockTimeout):
        FileLock(path, stale_after=60, timeout=0.5).acquire()  # alive: waits
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    t0 = time.monotonic()
    with FileLock(path, stale_after=60) as lock:  # dead PID on this host: no need to wait for the heartbeat
        assert json.loads(path.read_text())["token"] == lock.token
    assert time.monotonic() - t0 < 2.0
    assert not path.exists()


def test_killed_holder_on_another_host_is_taken_over_when_its_heartbeat_stops(tmp_path):
    path = tmp_path / "x.lock"
    holder = start_holder(path, other_host=True, stale=0.6)  # heartbeat every 0.1 s
    try:
        with pytest.raises(LockTimeout):  # a live heartbeat is never broken, however long it lasts
            FileLock(path, stale_after=0.6, timeout=2.0).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        t0 = time.monotonic()
        with FileLock(path, stale_after=0.6):
            waited = time.monotonic() - t0
        assert 0.5 <= waited < 3.0
    finally:
        holder.kill()


def test_racing_processes_split_one_file_once(tmp_path):
    """The real extraction: 3 processes open the same fresh .npz; one splits it, the others reuse the folder."""
    npz = write_medmnist(tmp_path, "bloodmnist", 28, n_classes=4, rgb=True, seed=3)
    log = tmp_path / "extracted.log"
    code = f"""
        import os, time
        import cbmir.data.medmnist as d
        original = d._extract_member
        def counted(zf, member, dest):
            with open({str(log)!r}, "a") as fh:
                fh.write(f"{{os.getpid()}} {{member}}\\n")
            time.sleep(0.05)
            original(zf, member, dest)
        d._extract_member = counted
        time.sleep(max(0.0, {time.time() + 4.0} - time.time()))
        folder = d.split_arrays(d.Path({str(npz)!r}))
        print(d.load_split(folder, "bloodmnist", 28, "train").images.sum())
    """
    procs = [python(code, stdout=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    lines = log.read_text().splitlines()
    assert len({line.split()[0] for line in lines}) == 1  # one process extracted
    assert len(lines) == len({line.split()[1] for line in lines})  # each member once
    expected = np.load(npz)["train_images"].sum()
    assert outs == [str(expected)] * 3


# Two real `python -m cbmir.run` processes on one cell (one computes, the other waits and reuses it):
# tests/test_faults_process.py::test_two_processes_on_one_cell_never_write_together.
