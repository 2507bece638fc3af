"""What a folder tree or a manifest lists: one :class:`Entry` per file, and the entries that cannot be items."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cbmir.data.datasets import SPLITS
from cbmir.errors import DataError

#: How a manifest separates the labels of a multi-label item (``effusion|edema``).
LABEL_SEPARATOR = "|"


@dataclass
class Entry:
    """One listed file: where it is, its labels, and (when known) its split and group."""

    path: Path  # absolute
    source: str  # as listed: relative to the root, or absolute where allowed
    labels: tuple[str, ...]
    split: str | None = None  # train | val | test, or None: cbmir assigns one
    group: str | None = None  # patient / study; None: the file is its own group
    extra: dict[str, str] = field(default_factory=dict)  # a manifest's other columns

    @property
    def group_key(self) -> str:
        return self.group if self.group else self.source


@dataclass
class Listing:
    """Everything a source lists: usable entries and bad ones (``source -> reason``), in listing order."""

    entries: list[Entry]
    bad: dict[str, str]
    root: Path
    multilabel: bool = False
    extra_columns: tuple[str, ...] = ()


def parse_labels(text: str, multilabel: bool) -> tuple[str, ...]:
    parts = text.split(LABEL_SEPARATOR) if multilabel else [text]
    return tuple(sorted({p.strip() for p in parts if p.strip()}))


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def class_order(labels: set[str]) -> list[str]:
    """Class names in natural order (``2`` before ``10``, case-insensitive): indices independent of file order."""
    return sorted(labels, key=_natural)


def check_split_names(entries: list[Entry], where: str) -> None:
    """Given splits are named train / test / val, and given for every item or for none."""
    given = {e.split for e in entries}
    if None in given and len(given) > 1:
        raise DataError(f"{where}: some items have a split and some do not; give every item one, or none")
    if given == {None}:
        return
    unknown = given - set(SPLITS)
    if unknown:
        raise DataError(f"{where}: unknown split names {sorted(unknown)}; use {list(SPLITS)}")


def inside(root: Path | str, path: Path | str) -> bool:
    """Whether ``path`` (resolved, symlinks followed) lies under ``root``."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def lexically_inside(root: str, path: str) -> bool:
    """Whether ``path`` (joined to ``root`` and normalised, ``..`` resolved without touching the disk) stays in it."""
    return os.path.normpath(os.path.join(root, path)).startswith(root.rstrip(os.sep) + os.sep)


def file_problem(path: Path | str) -> str | None:
    """Why ``path`` cannot be read as a file (missing, a broken link, a link loop, a folder), or None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a link loop: a link that points back to itself"
        if os.path.islink(path):
            return "a broken link (its target does not exist)"
        return "the file does not exist" if exc.errno == errno.ENOENT else f"cannot be read ({exc.strerror})"
    return None if stat.S_ISREG(st.st_mode) else "not a file"
