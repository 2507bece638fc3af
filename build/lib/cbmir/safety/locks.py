"""A lock file that works across processes and hosts on a shared filesystem, and never blocks forever.

Many cells of a cluster sweep may need the same data extraction, 3D resampling or
cache entry at once: exactly one of them does the work, the others wait and then reuse it.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local disks and NFSv3+,
unlike ``flock``, which Lustre refuses without ``-o flock``). It holds the holder's host,
PID and a random token, and a heartbeat thread refreshes its mtime. A waiter breaks it when
the holder is gone: at once for a dead PID on the same host, else when the waiter has seen
no heartbeat for ``stale_after`` seconds of its own clock (no clock skew between hosts
matters). Breaking is itself guarded by an ``O_EXCL`` file, so two waiters never both break
a lock and then both take it.

``CBMIR_LOCK_STALE_S`` sets the default ``stale_after`` (60 s; the heartbeat beats six times as often).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class LockTimeout(TimeoutError):
    """The lock stayed held by a live holder for longer than the caller's ``timeout``."""


def default_stale_after() -> float:
    return float(os.environ.get("CBMIR_LOCK_STALE_S", "60"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet still answers kill(0): a zombie holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone, or created but not yet written


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class FileLock:
    """``with FileLock(path): ...``: one holder at a time across processes and hosts (not re-entrant)."""

    def __init__(self, path: str | Path, *, stale_after: float | None = None, poll: float = 0.05, timeout=None):
        self.path = Path(path)
        self.stale_after = default_stale_after() if stale_after is None else float(stale_after)
        self.heartbeat = max(self.stale_after / 6, 0.01)
        self.poll = poll
        self.timeout = timeout
        self.token: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        # what this waiter last saw of the lock (token, mtime) and since when (monotonic)
        self._seen: tuple[Any, float | None] | None = None
        self._seen_since = 0.0

    # -- acquiring -------------------------------------------------------------------------------------------
    def acquire(self) -> FileLock:
        start, waited_log = time.monotonic(), False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            if self._try_create():
                return self
            if not waited_log:
                holder = _read(self.path) or {}
                log.info("waiting for %s (held by %s pid %s)", self.path, holder.get("host"), holder.get("pid"))
                waited_log = True
            holder = _read(self.path)
            if self._is_stale(holder):
                self._break(holder)
                continue
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                raise LockTimeout(f"{self.path} is still held after {self.timeout} s by {holder}")
            time.sleep(self.poll)

    def _try_create(self) -> bool:
        token = uuid.uuid4().hex
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": token, "created": time.time()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        self.token = token
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-heartbeat {self.path.name}", daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            holder = _read(self.path)
            if holder is not None and holder.get("token") != self.token:
                log.warning("%s was broken while held by this process (stalled > %s s?)", self.path, self.stale_after)
                return
            try:
                os.utime(self.path)
            except OSError:
                return

    # -- staleness -------------------------------------------------------------------------------------------
    def _is_stale(self, holder: dict[str, Any] | None) -> bool:
        """Dead PID on this host, or no heartbeat seen by this waiter for ``stale_after`` seconds."""
        if holder and holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"])):
            return True
        seen = ((holder or {}).get("token"), _mtime(self.path))
        now = time.monotonic()
        if seen != self._seen:
            self._seen, self._seen_since = seen, now
            return False
        return seen[1] is not None and now - self._seen_since >= self.stale_after

    def _break(self, holder: dict[str, Any] | None) -> None:
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            # another waiter is breaking it; one killed mid-break leaves a guard that ages out the same way
            if _mtime(guard) is not None and time.time() - (_mtime(guard) or 0) > max(self.stale_after, 1.0):
                guard.unlink(missing_ok=True)
            return
        try:
            current = _read(self.path)
            if (current or {}).get("token") == (holder or {}).get("token"):
                log.warning("breaking stale lock %s (held by %s)", self.path, holder)
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)
            self._seen = None

    # -- releasing -------------------------------------------------------------------------------------------
    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def exclusive(path: str | Path, **kwargs: Any):
    """``with exclusive(target.with_name(target.name + ".lock")): if not done: do it`` (see :class:`FileLock`)."""
    with FileLock(path, **kwargs) as lock:
        yield lock


def lock_path(target: str | Path) -> Path:
    """The lock file that guards the work producing ``target`` (beside it)."""
    target = Path(target)
    return target.with_name(target.name + ".lock")
