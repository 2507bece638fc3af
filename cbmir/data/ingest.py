"""Ingestion: own files decoded once, in parallel, into the memory-mapped split layout MedMNIST uses.

Everything is written into ``<folder>.partial/`` first: ``<split>_images.npy`` (memory-mapped,
filled chunk by chunk, so memory is bounded by the chunks in flight, not the dataset) and one
``rows/<split>-<start>.json`` per finished chunk, written only after that chunk's pixels are
flushed. An interrupted ingestion therefore resumes at the first unfinished chunk, and a
changed source (another plan key) starts over. :func:`finalize` then drops skipped files,
writes labels, one metadata table per split (``<split>_metadata.csv``: source path, label,
group, original shape, bytes, mtime, blake2b and the manifest's extra columns; formula starts neutralised
for spreadsheets, the raw values in ``<split>_metadata.json``) and
``state.json``, sets the ``.complete`` marker and swaps the folder into place with renames.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbmir.data.decode import DecodeLimits, DecodeSpec, decode_chunk, hash_chunk
from cbmir.data.entries import LABEL_SEPARATOR, Entry
from cbmir.logs import get_logger
from cbmir.safety.files import atomic_save_npy, atomic_write_json, atomic_write_text
from cbmir.safety.spreadsheet import neutralise

log = get_logger(__name__)

#: Bytes of decoded pixels per chunk: a chunk is one task of a worker and one flush of the memory map.
CHUNK_BYTES = 4 << 20
MAX_CHUNK = 512
METADATA_COLUMNS = ("index", "source", "label", "group", "split", "shape", "bytes", "mtime_ns", "blake2b")


@dataclass(frozen=True)
class Chunk:
    split: str
    start: int
    paths: list[str]


def item_shape(spec: DecodeSpec, rgb: bool) -> tuple[int, ...]:
    if spec.dims == 3:
        return (spec.size,) * 3
    return (spec.size, spec.size, 3) if rgb else (spec.size, spec.size)


def chunk_items(spec: DecodeSpec) -> int:
    return int(np.clip(CHUNK_BYTES // int(np.prod(item_shape(spec, rgb=True))), 1, MAX_CHUNK))


def run_chunks(function, chunks: list[Chunk], extra: tuple, workers: int) -> Iterator[tuple[Chunk, list]]:
    """``function(chunk.paths, *extra)`` for every chunk, in worker processes, at most 2 chunks per worker in flight.

    Results arrive in completion order. Workers are spawned (not forked): the parent may hold
    torch's threads, which a fork would copy half-initialised.
    """
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield chunk, function(chunk.paths, *extra)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        queue = iter(chunks)
        pending = {}
        for chunk in queue:
            pending[pool.submit(function, chunk.paths, *extra)] = chunk
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                chunk = pending.pop(future)
                yield chunk, future.result()
                following = next(queue, None)
                if following is not None:
                    pending[pool.submit(function, following.paths, *extra)] = following


def hash_files(paths: list[str], workers: int) -> list[str]:
    """blake2b of many files, in parallel (the check that a touched file's bytes did not change)."""
    chunks = [Chunk("", start, paths[start : start + 1024]) for start in range(0, len(paths), 1024)]
    out = [""] * len(paths)
    for chunk, digests in run_chunks(hash_chunk, chunks, (), workers):
        out[chunk.start : chunk.start + len(digests)] = digests
    return out


class Stores:
    """The partial folder's image arrays, one per split, opened read-write; gray until a colour item arrives."""

    def __init__(self, partial: Path, counts: dict[str, int], spec: DecodeSpec):
        self.partial, self.spec = partial, spec
        self.arrays: dict[str, np.memmap] = {}
        for split, n in counts.items():
            path = self.path(split)
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp.npy")
                shape = (n, *item_shape(spec, rgb=spec.channels == "3"))
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
                os.replace(tmp, path)
            self.arrays[split] = np.load(path, mmap_mode="r+", allow_pickle=False)
        if any(self.is_rgb(s) for s in self.arrays):  # a run that died between two splits' upgrades
            self.to_rgb()

    def path(self, split: str) -> Path:
        return self.partial / f"{split}_images.npy"

    def is_rgb(self, split: str) -> bool:
        return self.spec.dims == 2 and self.arrays[split].ndim == 4

    def to_rgb(self) -> None:
        """Colour arrived in a dataset written as gray so far: every split becomes RGB (gray repeated)."""
        for split, array in list(self.arrays.items()):
            if self.is_rgb(split):
                continue
            log.info("colour images found: storing %s as RGB", split)
            path = self.path(split)
            tmp = path.with_name(path.name + ".rgb.tmp.npy")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(*array.shape, 3))
            for start in range(0, len(array), 4096):
                out[start : start + 4096] = array[start : start + 4096, ..., None]
            out.flush()
            del out, array
            self.arrays.pop(split)
            os.replace(tmp, path)
            self.arrays[split] = np.load(path, mmap_mode="r+", allow_pickle=False)

    def write(self, chunk: Chunk, results: list) -> None:
        if (
            self.spec.dims == 2
            and not self.is_rgb(chunk.split)
            and any(p is not None and p.ndim == 3 for p, _ in results)
        ):
            self.to_rgb()
        array = self.arrays[chunk.split]
        for j, (pixels, _) in enumerate(results):
            if pixels is None:
                continue
            if array.ndim == 4 and pixels.ndim == 2 and self.spec.dims == 2:
                pixels = pixels[..., None]
            array[chunk.start + j] = pixels
        array.flush()


def decode_into_partial(
    partial: Path,
    splits: dict[str, list[Entry]],
    spec: DecodeSpec,
    plan_key: str,
    workers: int,
    limits: DecodeLimits | None = None,
) -> dict[str, list[dict]]:
    """Decode every entry into ``partial`` (resuming a finished prefix of chunks); the records per split."""
    plan = {"plan_key": plan_key, "counts": {s: len(e) for s, e in splits.items()}}
    plan_file = partial / "plan.json"
    if partial.exists() and (not plan_file.exists() or json.loads(plan_file.read_text()) != plan):
        shutil.rmtree(partial)
    rows = partial / "rows"
    if not plan_file.exists():
        rows.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_file, plan)
    stores = Stores(partial, plan["counts"], spec)
    per_chunk = chunk_items(spec)
    chunks = [
        Chunk(split, start, [str(e.path) for e in entries[start : start + per_chunk]])
        for split, entries in splits.items()
        for start in range(0, len(entries), per_chunk)
    ]
    todo = [c for c in chunks if not (rows / f"{c.split}-{c.start:09d}.json").exists()]
    total = sum(len(c.paths) for c in chunks)
    if len(todo) < len(chunks):
        log.info("resuming an interrupted ingestion: %d of %d chunks done", len(chunks) - len(todo), len(chunks))
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=total - sum(len(c.paths) for c in todo), unit="file", desc="ingest") as bar:
        for chunk, results in run_chunks(decode_chunk, todo, (spec, limits or DecodeLimits()), workers):
            stores.write(chunk, results)
            atomic_write_text(rows / f"{chunk.split}-{chunk.start:09d}.json", json.dumps([r for _, r in results]))
            bar.update(len(results))
    del stores
    records: dict[str, list[dict]] = {}
    for split, entries in splits.items():
        records[split] = []
        for start in range(0, len(entries), per_chunk):
            records[split] += json.loads((rows / f"{split}-{start:09d}.json").read_text())
    return records


def _compact(path: Path, keep: np.ndarray) -> None:
    """Rewrite an image array with only the rows in ``keep`` (chunk by chunk, bounded memory)."""
    source = np.load(path, mmap_mode="r", allow_pickle=False)
    tmp = path.with_name(path.name + ".kept.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), *source.shape[1:]))
    for start in range(0, len(keep), 4096):
        out[start : start + 4096] = source[keep[start : start + 4096]]
    out.flush()
    del out, source
    os.replace(tmp, path)


def write_metadata(
    path: Path, entries: list[Entry], records: list[dict], stats: list[tuple[int, int]], extra: tuple
) -> None:
    """``<split>_metadata.csv`` for people (formula starts neutralised) and ``.json`` beside it with the raw values.

    Paths, labels, groups and a manifest's columns come from users: ``=HYPERLINK(…)`` in a cell would run when
    the CSV is opened in a spreadsheet, so the CSV gets :func:`cbmir.safety.spreadsheet.neutralise`; cbmir
    itself reads the JSON, whose strings are data and never formulas.
    """
    columns = [*METADATA_COLUMNS, *extra]
    rows = []
    for i, (e, r, (_, mtime)) in enumerate(zip(entries, records, stats)):
        label = LABEL_SEPARATOR.join(e.labels)
        row = [i, e.source, label, e.group_key, e.split, r["shape"], r["bytes"], mtime, r["blake2b"]]
        rows.append(row + [e.extra.get(c, "") for c in extra])
    write_csv(path, [columns, *rows])
    atomic_write_json(path.with_suffix(".json"), {"columns": columns, "rows": rows})


def write_csv(path: Path, rows: list[list]) -> None:
    """A CSV of user-supplied strings, every formula start neutralised, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows([neutralise(v) for v in row] for row in rows)
    os.replace(tmp, path)


def read_metadata(path: Path, names: tuple[str, ...]) -> list[tuple]:
    """Columns of a split's metadata, raw (from the JSON sidecar), one tuple per item."""
    table = json.loads(path.with_suffix(".json").read_text())
    at = [table["columns"].index(n) for n in names]
    return [tuple(row[i] for i in at) for row in table["rows"]]


def finalize(
    partial: Path,
    folder: Path,
    splits: dict[str, list[Entry]],
    records: dict[str, list[dict]],
    labels: dict[str, np.ndarray],
    stats: dict[str, list[tuple[int, int]]],
    state: dict,
    extra_columns: tuple[str, ...] = (),
) -> None:
    """Leave out the failed items, write labels, metadata and state, mark complete, and swap into place."""
    for split, entries in splits.items():
        ok = np.array([not r["error"] for r in records[split]], dtype=bool)
        keep = np.flatnonzero(ok)
        if len(keep) < len(entries):
            _compact(partial / f"{split}_images.npy", keep)
        atomic_save_npy(partial / f"{split}_labels.npy", labels[split][keep])
        write_metadata(
            partial / f"{split}_metadata.csv",
            [entries[i] for i in keep],
            [records[split][i] for i in keep],
            [stats[split][i] for i in keep],
            extra_columns,
        )
    write_csv(partial / "skipped.csv", [["path", "reason"], *([s["path"], s["reason"]] for s in state["skipped"])])
    atomic_write_json(partial / "state.json", state)
    shutil.rmtree(partial / "rows", ignore_errors=True)
    (partial / "plan.json").unlink(missing_ok=True)
    (partial / ".complete").touch()
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.rename(folder, old)
    os.rename(partial, folder)
    shutil.rmtree(old, ignore_errors=True)
