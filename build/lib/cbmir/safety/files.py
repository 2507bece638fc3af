"""Atomic file writes: a reader sees the old file or the new one, never half of one (numpy only, no torch).

A full disk surfaces as :class:`~cbmir.errors.DiskFullError` naming the file and the space it
needs, and the temporary file is removed, so nothing finished-looking is left behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.errors import DiskFullError
from cbmir.safety import faults

_FULL = (errno.ENOSPC, errno.EDQUOT)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_full(path: Path, needed: int) -> DiskFullError:
    return DiskFullError(
        f"no space left on the device to write {path}: it needs {human_bytes(needed)}, "
        f"{human_bytes(free_bytes(path))} are free there. Free some space, or point paths.output_dir elsewhere."
    )


def require_space(path: Path, needed: int) -> None:
    """Fail before writing ``needed`` bytes under ``path`` when the file system cannot hold them."""
    if free_bytes(path) < needed:
        raise disk_full(path, needed)


@contextmanager
def writing(path: Path, needed: int, tmp: Path | None = None) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into a :class:`DiskFullError`; remove ``tmp`` on any failure."""
    try:
        faults.hit("write", str(path))
        yield
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, DiskFullError) and exc.errno in _FULL:
            raise disk_full(path, needed) from exc
        raise


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npy")
    with writing(path, array.nbytes + 128, tmp):
        np.save(tmp, array, allow_pickle=False)
        os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, len(text.encode()), tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any, *, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str, sort_keys=sort_keys))
