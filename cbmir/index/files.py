"""A search index on disk: one generation folder, every file checksummed in its ``manifest.json`` (no torch).

A generation holds what a query needs and nothing that could run code on load: the FAISS index
(``faiss.index``), the embeddings it was built from (``embeddings.npy``), the items' labels
(``labels.npy``), their metadata (``items.csv``: row, split, position, source, label, group, withheld),
small RGB thumbnails (``thumbs.npy``), optionally the items' pixels as the model saw them
(``images.npy``), a synthetic probe image that a reopened backbone must embed again to the stored
vector (``probe.npy``), and the manifest (model, weights identity, preprocessing, metric, privacy,
versions, sha256 of every file). An index folder holds generations and a ``CURRENT`` pointer
(:mod:`cbmir.index.generations`); an old single-folder index still opens.

Sizes and structure are always checked (``--no-verify`` skips only the hashes): each ``.npy`` header is
parsed (no object dtype, the shape the manifest says, the file exactly as long as the header
promises) and FAISS errors become one line. Arrays are read row by row with ``pread`` rather than
memory-mapped, so a file truncated under a running server is an error, never a SIGBUS.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.errors import DataError
from cbmir.index.generations import resolve
from cbmir.safety.files import atomic_write_json
from cbmir.safety.integrity import file_digest
from cbmir.safety.spreadsheet import neutralise

FORMAT = "cbmir-index/1"
MANIFEST = "manifest.json"
FAISS_FILE = "faiss.index"
EMBEDDINGS = "embeddings.npy"
LABELS = "labels.npy"
ITEMS = "items.csv"
THUMBS = "thumbs.npy"
IMAGES = "images.npy"
PROBE = "probe.npy"
IDS = "ids.npy"  # an approximate index's FAISS ids, one per row, ascending
JOINT = "joint.npy"  # vision-language models: the items' unit joint image-text vectors (text queries)
ITEM_COLUMNS = ("row", "split", "position", "source", "label", "label_name", "group", "withheld")
REQUIRED = (FAISS_FILE, EMBEDDINGS, LABELS, ITEMS, THUMBS, PROBE)
#: Columns whose values come from users (file and folder names, manifest columns, class names).
USER_COLUMNS = ("source", "label_name", "group")


class BrokenIndexError(DataError):
    """An index folder that is missing, incomplete, tampered with or of another format."""


class IndexMismatchError(DataError):
    """A query backbone that is not the one the index was built with."""


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def write_items(path: Path, rows: list[dict[str, Any]]) -> None:
    """``items.csv`` with user-supplied strings neutralised for spreadsheets (``=HYPERLINK(…)`` → ``'=HYPERLINK…``)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=ITEM_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**{"withheld": ""}, **row, **{c: neutralise(row.get(c, "")) for c in USER_COLUMNS}})
    os.replace(tmp, path)


def read_items(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BrokenIndexError(f"{path.name} cannot be read ({exc})") from None
    for row in rows:
        row.setdefault("withheld", "")  # indexes built before burned-in checks
        if None in row or any(v is None for v in row.values()):
            raise BrokenIndexError(f"{path.name}: row {len(rows)} does not have the columns of its header")
    return rows


def seal(partial: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file of ``partial`` (flushed to disk) and write its manifest; returns the manifest written."""
    files = sorted(p for p in partial.iterdir() if p.is_file() and p.name != MANIFEST)
    for path in files:  # durable before the pointer can name them, not only written
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    manifest = {
        **manifest,
        "format": FORMAT,
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
    }
    atomic_write_json(partial / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BrokenIndexError(
            f"{folder} is not a cbmir index: {MANIFEST} is missing (build one with python -m cbmir.index)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BrokenIndexError(f"{path} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BrokenIndexError(f"{path}: format {got!r}, this cbmir reads {FORMAT!r}")
    if not isinstance(manifest.get("files"), dict):
        raise BrokenIndexError(f"{path}: no file list")
    return manifest


def verify(folder: Path, manifest: dict[str, Any], *, hashes: bool = True) -> None:
    """Every listed file present and of its size (and, with ``hashes``, its sha256); names every problem."""
    folder = Path(folder)
    problems = []
    for name, expected in manifest["files"].items():
        path = folder / name
        if Path(name).name != name:
            problems.append(f"{name}: not a plain file name")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != expected.get("bytes"):
            problems.append(f"{name}: changed ({path.stat().st_size} bytes, the manifest says {expected.get('bytes')})")
        elif hashes and sha256_file(path) != expected.get("sha256"):
            problems.append(f"{name}: changed (sha256 differs from the manifest)")
    for required in REQUIRED:
        if required not in manifest["files"]:
            problems.append(f"{required}: not listed in the manifest")
    if problems:
        raise BrokenIndexError(f"index {folder} failed its checks; rebuild it:\n  " + "\n  ".join(problems))


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a ``.npy`` file, refusing object arrays and wrong lengths."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise BrokenIndexError(f"{path.name} is not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise BrokenIndexError(f"{path.name} holds Python objects (a pickle); an index holds plain numbers only")
    if fortran:
        raise BrokenIndexError(f"{path.name} is stored in Fortran order; cbmir writes C order")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise BrokenIndexError(f"{path.name} is {size} bytes, its header promises {expected} (truncated or padded)")
    return tuple(int(n) for n in shape), dtype, offset


class RowFile:
    """Rows of a ``.npy`` read with ``os.pread`` on demand: no memory map, so a later truncation is an error."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shape, self.dtype, self.offset = npy_header(self.path)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, start: int, count: int) -> np.ndarray:
        count = max(0, min(count, len(self) - start))
        want = count * self.row_bytes
        data = os.pread(self._fd, want, self.offset + start * self.row_bytes) if want else b""
        if len(data) != want:
            raise BrokenIndexError(f"{self.path} was truncated after the index was opened; rebuild or restore it")
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:]) if not np.isscalar(key[0]) else key[1:]]
        if isinstance(key, (int, np.integer)):
            row = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} outside 0..{len(self) - 1}")
            return self.read(row, 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            block = self.read(start, max(0, stop - start))
            return block[::step] if step != 1 else block
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        flat = rows.reshape(-1)
        out = np.empty((len(flat), *self.shape[1:]), dtype=self.dtype)
        for i, r in enumerate(flat):
            out[i] = self[int(r)]
        return out.reshape((*rows.shape, *self.shape[1:]))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.read(0, len(self))
        return out.astype(dtype) if dtype is not None else out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass


def load_array(path: Path) -> np.ndarray:
    """A small array read whole into memory, after the structural checks."""
    npy_header(path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise BrokenIndexError(f"{path.name} cannot be read ({exc})") from None


def read_faiss(path: Path):
    """The FAISS index read into memory; a malformed file is one line, not a faiss RuntimeError."""
    import faiss

    try:
        return faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BrokenIndexError(f"{path.name} is not a readable FAISS index ({reason[:200]})") from None


@dataclass
class IndexFolder:
    """An opened, checked generation: the FAISS index in memory, arrays read by row, items in memory."""

    folder: Path  # the generation's folder (the files)
    manifest: dict[str, Any]
    faiss_index: Any
    embeddings: RowFile  # float32 (N, d)
    labels: np.ndarray  # int64 (N, L)
    items: list[dict[str, str]]
    thumbs: RowFile  # uint8 (N, t, t, 3)
    images: RowFile | None  # the items' pixels; None when the build left them out
    probe: np.ndarray  # pixels that the model must embed to ``probe_vector``
    root: Path | None = None  # the index folder holding the generations (None: an old single-folder index)
    ids: np.ndarray | None = None  # FAISS ids of the rows (approximate indexes); None: the ids are the rows
    joint: RowFile | None = None  # float32 (N, e) joint image-text vectors; None: no text queries

    def __len__(self) -> int:
        return len(self.items)

    @property
    def class_names(self) -> dict[str, str] | None:
        return self.manifest.get("class_names")

    @property
    def generation(self) -> str | None:
        return self.folder.name if self.root is not None else None

    @property
    def probe_vector(self) -> np.ndarray:
        """The stored embedding of the probe: the manifest's (synthetic probe) or an item's (older indexes)."""
        if self.manifest.get("probe_embedding") is not None:
            return np.asarray(self.manifest["probe_embedding"], dtype=np.float32)
        return self.embeddings[int(self.manifest["probe_row"])]


def _check_shapes(folder: Path, manifest: dict, arrays: dict[str, Any], faiss_index, items: list) -> None:
    n, dim = manifest.get("n_items"), manifest.get("embedding_dim")
    wrong = []
    counts = {FAISS_FILE: faiss_index.ntotal, ITEMS: len(items), **{k: len(a) for k, a in arrays.items()}}
    wrong += [f"{name}: {count} items" for name, count in counts.items() if count != n]
    emb, labels, thumbs = arrays[EMBEDDINGS], arrays[LABELS], arrays[THUMBS]
    if faiss_index.d != dim or emb.shape[1:] != (dim,):
        wrong.append(f"width {faiss_index.d}/{emb.shape[1:]}, the manifest says {dim}")
    expected = {EMBEDDINGS: (np.float32, "float32"), LABELS: (np.integer, "integer"), THUMBS: (np.uint8, "uint8")}
    expected[IMAGES] = (np.uint8, "uint8")
    expected[JOINT] = (np.float32, "float32")
    for name, (kind, text) in expected.items():
        if name in arrays and not np.issubdtype(arrays[name].dtype, kind):
            wrong.append(f"{name}: dtype {arrays[name].dtype}, expected {text}")
    if labels.ndim != 2 or thumbs.ndim != 4 or thumbs.shape[-1] != 3:
        wrong.append(f"labels {labels.shape} / thumbnails {thumbs.shape}: not (N, L) / (N, t, t, 3)")
    if wrong:
        raise BrokenIndexError(f"index {folder} is inconsistent (manifest: {n} items):\n  " + "\n  ".join(wrong))


def open_index(folder: str | Path, *, check: bool = True) -> IndexFolder:
    """Open an index (its ``CURRENT`` generation, or an old single folder); ``check`` also verifies sha256."""
    root = Path(folder).expanduser().resolve()
    generation = resolve(root)
    manifest = read_manifest(generation)
    verify(generation, manifest, hashes=check)
    faiss_index = read_faiss(generation / FAISS_FILE)
    arrays: dict[str, Any] = {name: RowFile(generation / name) for name in (EMBEDDINGS, THUMBS)}
    arrays[LABELS] = load_array(generation / LABELS)
    if IMAGES in manifest["files"]:
        arrays[IMAGES] = RowFile(generation / IMAGES)
    if JOINT in manifest["files"]:
        arrays[JOINT] = RowFile(generation / JOINT)
    items = read_items(generation / ITEMS)
    ids = load_array(generation / IDS) if IDS in manifest["files"] else None
    if ids is not None:
        if ids.shape != (len(items),) or not np.issubdtype(ids.dtype, np.integer) or np.any(np.diff(ids) <= 0):
            raise BrokenIndexError(f"index {generation}: {IDS} is not one ascending id per item")
        arrays[IDS] = ids
    _check_shapes(generation, manifest, arrays, faiss_index, items)
    return IndexFolder(
        generation,
        manifest,
        faiss_index,
        arrays[EMBEDDINGS],
        arrays[LABELS],
        items,
        arrays[THUMBS],
        arrays.get(IMAGES),
        load_array(generation / PROBE),
        root if generation != root else None,
        ids,
        arrays.get(JOINT),
    )
