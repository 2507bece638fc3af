"""Generations of an index folder: each change is a new folder beside the current one, switched by a pointer.

``DIR/CURRENT`` holds the name of the current generation folder (``g000003``). A writer builds
``DIR/g000004.partial``, checksums it, renames it to ``DIR/g000004`` and only then replaces the
pointer (a temporary file, fsync'd, ``os.replace``d, the folder fsync'd). A crash at any point
leaves ``CURRENT`` naming a complete generation; what the crash left behind (a ``.partial`` folder,
a finished generation never switched to) is removed by the next writer. After a switch, all but
the newest ``keep`` generations up to the current one are pruned. Writers take ``DIR/.lock``
(:mod:`cbmir.safety.locks`), so two adds never interleave; readers take no lock.

A folder with a ``manifest.json`` and no pointer is an index from before generations: it opens as is.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cbmir.errors import DataError
from cbmir.safety import faults

POINTER = "CURRENT"
LOCK = ".lock"
NAME = re.compile(r"^g(\d{6})$")
PARTIAL = ".partial"


class GenerationError(DataError):
    """A pointer that names no generation, or a folder that is no index."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_name(root: Path) -> str | None:
    """The name ``CURRENT`` holds, or None for a folder without a pointer."""
    pointer = Path(root) / POINTER
    try:
        name = pointer.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerationError(f"{pointer} cannot be read ({exc})") from None
    if not NAME.match(name):
        raise GenerationError(f"{pointer} names {name[:40]!r}, not a generation folder (g000001, …)")
    return name


def resolve(root: Path) -> Path:
    """The folder holding the files of ``root``'s current generation (``root`` itself for an old index)."""
    root = Path(root)
    name = current_name(root)
    if name is None:
        return root
    folder = root / name
    if not folder.is_dir():
        raise GenerationError(f"{root / POINTER} names {name}, which is missing; restore it or rebuild the index")
    return folder


def generations(root: Path) -> list[str]:
    """Complete generation folders of ``root``, oldest first."""
    if not Path(root).is_dir():
        return []
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and NAME.match(p.name))


def clear_leftovers(root: Path) -> list[str]:
    """Remove what crashed writers left: ``.partial`` folders and finished generations never switched to."""
    current = current_name(root) or ""
    removed = []
    for path in Path(root).iterdir():
        name = path.name
        stale = name.endswith(PARTIAL) and re.match(r"^g\d{6}", name)
        unswitched = NAME.match(name) and name > current
        if path.is_dir() and (stale or unswitched):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def next_partial(root: Path) -> Path:
    """An empty ``gNNNNNN.partial`` folder numbered after every generation and leftover in ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"^g(\d{6})", p.name))]
    clear_leftovers(root)  # numbers are never reused, not even a dead writer's
    partial = root / f"g{max(numbers, default=0) + 1:06d}{PARTIAL}"
    partial.mkdir()
    return partial


def switch(root: Path, name: str) -> None:
    """Make ``name`` current: the pointer replaced atomically, durable before this returns."""
    tmp = Path(root) / (POINTER + ".tmp")
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, Path(root) / POINTER)
    _fsync_dir(Path(root))


def prune(root: Path, keep: int) -> list[str]:
    """Remove leftovers of crashed writers and all but the ``keep`` newest generations up to the current one."""
    root = Path(root)
    current = current_name(root)
    if current is None:
        return []
    removed = clear_leftovers(root)
    older = [g for g in generations(root) if g <= current]
    for name in older[: max(0, len(older) - max(1, keep))]:
        shutil.rmtree(root / name, ignore_errors=True)
        removed.append(name)
    return removed


def commit(root: Path, partial: Path, keep: int) -> Path:
    """Rename a sealed ``partial`` to its generation name, switch ``CURRENT`` to it, prune; returns the folder."""
    final = partial.with_name(partial.name[: -len(PARTIAL)])
    os.replace(partial, final)
    _fsync_dir(Path(root))
    faults.hit("index_switch", str(final))  # a complete generation that CURRENT does not name yet
    switch(root, final.name)
    prune(root, keep)
    return final


def adopt_legacy(root: Path) -> None:
    """Move an old single-folder index's files into ``g000001`` and point at it (first change of such an index)."""
    root = Path(root)
    if current_name(root) is not None or not (root / "manifest.json").is_file():
        return
    first = root / "g000001"
    first.mkdir()
    for path in list(root.iterdir()):
        if path.is_file() and path.name not in (LOCK, POINTER):
            os.replace(path, first / path.name)
    switch(root, first.name)


@contextmanager
def writing(root: Path) -> Iterator[None]:
    """The index's writer lock (one add, remove or build at a time)."""
    from cbmir.safety.locks import exclusive

    Path(root).mkdir(parents=True, exist_ok=True)
    with exclusive(Path(root) / LOCK):
        yield
