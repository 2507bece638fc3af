"""File locks between processes and machines: one writer per cell and per cache entry.

A lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+)
that names its holder (pid, host, start time). A daemon thread touches it every
``heartbeat_s`` seconds. A lock is stale, and is broken, when its holder is a dead process on
this host, or when its heartbeat is older than ``stale_s`` (a holder on another machine that
died or lost the file system). Breaking goes through a second ``O_EXCL`` guard file, so two
waiters never both break one lock and then delete each other's fresh one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cbmir.errors import LockBusyError
from cbmir.logs import get_logger

log = get_logger(__name__)

HEARTBEAT_S = 10.0
STALE_S = 120.0
#: A guard (or a lock still being written) older than this was left by a process killed mid-step.
GUARD_STALE_S = 30.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FileLock:
    """An exclusive lock at ``path``; ``with FileLock(p).acquire(timeout):`` or ``try_acquire``/``release``."""

    def __init__(self, path: Path, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- who holds it ---------------------------------------------------------------------------------------
    def holder(self) -> dict[str, Any] | None:
        """The holder's record, ``{}`` while it is being written or unreadable, ``None`` when unlocked."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {}

    def stale_reason(self) -> str | None:
        """Why the current lock is stale (``None``: held by a live holder, or not held)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        held = self.holder()
        if held is None:
            return None
        if not held:
            return f"unreadable lock, {age:.0f} s old" if age > GUARD_STALE_S else None
        if held.get("host") == socket.gethostname() and not _pid_alive(int(held.get("pid", -1))):
            return f"its holder, process {held.get('pid')}, is gone"
        if age > self.stale_s:
            return f"its holder ({held.get('host')}:{held.get('pid')}) sent no heartbeat for {age:.0f} s"
        return None

    def describe(self) -> str:
        held = self.holder() or {}
        return f"process {held.get('pid', '?')} on {held.get('host', '?')} since {held.get('started', '?')}"

    # -- taking and giving back -----------------------------------------------------------------------------
    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "token": self.token,
        }
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(record))
        return True

    def _break_stale(self) -> bool:
        """Remove the lock if it is stale; True when it was removed (by us or a concurrent breaker)."""
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > GUARD_STALE_S:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            reason = self.stale_reason()  # checked again under the guard
            if reason is None:
                return False
            log.warning("breaking the stale lock %s: %s", self.path, reason)
            self.path.unlink(missing_ok=True)
            return True
        finally:
            guard.unlink(missing_ok=True)

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; never waits."""
        if self._create():
            self._start_heartbeat()
            return True
        if self.stale_reason() is not None and self._break_stale() and self._create():
            self._start_heartbeat()
            return True
        return False

    def acquire(self, timeout: float | None = None, poll: float = 0.5) -> FileLock:
        """Take the lock, waiting up to ``timeout`` seconds (``None``: as long as its holder lives)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = False
        while not self.try_acquire():
            if deadline is not None and time.monotonic() >= deadline:
                raise LockBusyError(self.path, self.describe())
            if not announced:
                log.info("waiting for %s, held by %s", self.path, self.describe())
                announced = True
            time.sleep(poll)
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        held = self.holder()
        if held and held.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {self.path.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                log.warning("lock %s vanished while held (broken as stale by another process?)", self.path)
                return
