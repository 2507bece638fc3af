"""Own data (``dataset.kind`` folder | manifest): list, split, ingest once, and map like MedMNIST.

The ingested splits live in ``<paths.data_dir>/own/<name>/<size>px-<settings>/``, one folder per
decoding setting (size, fit, channels, window, dims, source, split rule). They are reused while
every listed file keeps its (size, mtime) and label, group and split; when that quick check
fails, the files are hashed, and only a changed content key (any file's bytes, an added or
removed file, a changed label, group or split) ingests again. Never a stale cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbmir.data.datasets import ROLE_SPLIT, Provenance, Split, load_split
from cbmir.data.decode import DecodeLimits, DecodeSpec
from cbmir.data.entries import Entry, Listing, class_order
from cbmir.data.fit import FITS
from cbmir.data.folder import list_folder
from cbmir.data.ingest import decode_into_partial, finalize, hash_files, read_metadata, write_csv
from cbmir.data.manifest import read_manifest
from cbmir.data.series import series_files
from cbmir.data.splits import (
    assign_splits,
    groups_on_both_sides,
    labels_missing_from_database,
    read_assignment,
    write_assignment,
)
from cbmir.data.volumes import resized_volumes
from cbmir.errors import ConfigError, DataError
from cbmir.layout import safe_name
from cbmir.logs import get_logger
from cbmir.safety.files import atomic_write_json

log = get_logger(__name__)

OWN_KINDS = ("folder", "manifest")
BAD_FILE_RULES = ("error", "skip")
#: Bumped when decoding changes, so every earlier ingestion is redone.
INGEST_VERSION = "own-v2"
ROLE_TEXT = {"database": "the database", "query": "the queries"}
#: Bad files named in an error message (all of them are in ``bad_files.csv``).
SHOWN_BAD = 40


@dataclass(frozen=True)
class OwnData:
    """A validated own-data ``dataset`` config."""

    kind: str
    name: str
    source: Path  # the folder tree's root or the manifest file
    spec: DecodeSpec
    fraction: float
    seed: int
    on_bad_file: str
    allow_absolute: bool
    workers: int

    def settings(self, size: int) -> dict:
        """What the ingested pixels and splits depend on (not ``on_bad_file`` or ``workers``)."""
        s = self.spec
        return {
            "version": INGEST_VERSION,
            "kind": self.kind,
            "source": str(self.source),
            "size": size,
            "dims": s.dims,
            "fit": s.fit,
            "channels": s.channels,
            "window": list(s.window) if s.window else None,
            "split": {"fraction": self.fraction, "seed": self.seed},
            "allow_absolute": self.allow_absolute,
        }


def _key(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def own_config(d) -> OwnData:
    """Check an own-data ``dataset`` node; every problem is a :class:`ConfigError` that names the key."""
    kind = d.get("kind")
    name = d.get("name")
    if not name or safe_name(name) != str(name) or str(name) in (".", ".."):
        raise ConfigError(
            f"dataset.name={name!r}: own data needs a name for its results folder, of letters, digits, "
            "'.', '_', '+' and '-' only (e.g. dataset.name=chest_xray)"
        )
    key = "root" if kind == "folder" else "path"
    if not d.get(key):
        raise ConfigError(f"dataset={kind} needs dataset.{key}=" + ("FOLDER" if kind == "folder" else "FILE.csv"))
    source = Path(str(d.get(key))).expanduser().resolve()
    if not (source.is_dir() if kind == "folder" else source.is_file()):
        raise ConfigError(f"dataset.{key}={d.get(key)} is not a {'folder' if kind == 'folder' else 'file'}")
    dims = d.get("dims", 2)
    if dims not in (2, 3):
        raise ConfigError(f"dataset.dims must be 2 (images) or 3 (volumes), got {dims!r}")
    channels = str(d.get("channels", "auto"))
    if channels not in ("auto", "1", "3"):
        raise ConfigError(f"dataset.channels must be auto, 1 or 3, got {channels!r}")
    fit = d.get("fit", "pad")
    if fit not in FITS:
        raise ConfigError(f"dataset.fit must be one of {FITS}, got {fit!r}")
    window = d.get("window")
    if window is not None:
        if len(window) != 2 or not all(isinstance(v, (int, float)) for v in window) or window[1] <= 0:
            raise ConfigError(f"dataset.window must be [center, width] with width > 0, got {window!r}")
        window = (float(window[0]), float(window[1]))
    split = d.get("split") or {}
    fraction, seed = split.get("fraction", 0.2), split.get("seed", 0)
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"dataset.split.fraction (the queries' share) must lie in (0, 1), got {fraction!r}")
    rule = d.get("on_bad_file", "error")
    if rule not in BAD_FILE_RULES:
        raise ConfigError(f"dataset.on_bad_file must be one of {BAD_FILE_RULES}, got {rule!r}")
    workers = d.get("workers") or os.cpu_count() or 1
    spec = DecodeSpec(size=0, dims=dims, fit=fit, channels=channels if dims == 2 else "1", window=window)
    return OwnData(
        kind, str(name), source, spec, float(fraction), int(seed), rule, bool(d.get("allow_absolute")), int(workers)
    )


def list_source(own: OwnData) -> Listing:
    series = own.spec.dims == 3  # a folder of single-frame DICOM files is one series, one volume
    if own.kind == "folder":
        return list_folder(own.source, series=series)
    return read_manifest(own.source, allow_absolute=own.allow_absolute, series=series)


def _assign(own: OwnData, entries: list[Entry], base: Path) -> None:
    """Give every entry a split when the source gives none (seeded, by group, kept across ingestions)."""
    if not entries or entries[0].split is not None:
        return
    path = base / f"split-f{own.fraction:g}-s{own.seed}.csv"
    previous = read_assignment(path)
    groups = [e.group_key for e in entries]
    sides = assign_splits([e.labels for e in entries], groups, own.fraction, own.seed, previous)
    for e, side in zip(entries, sides):
        e.split = side
    assignment = {**previous, **dict(zip(groups, sides))}
    if assignment != previous:
        write_assignment(path, assignment)


def _folder_stats(folder: Path) -> tuple[int, int]:
    stats = [p.stat() for p in series_files(folder)]
    return sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)


def _stats(entries: list[Entry], bad: dict[str, str]) -> dict[str, tuple[int, int]]:
    out = {}
    for e in entries:
        try:
            if e.path.is_dir():  # a DICOM series: its files' total size and newest change
                out[e.source] = _folder_stats(e.path)
                continue
            st = os.stat(e.path)
        except OSError as exc:
            bad[e.source] = f"cannot be read ({exc.strerror})"
            continue
        out[e.source] = (st.st_size, st.st_mtime_ns)
    return out


def _entry_key(e: Entry) -> list:
    return [e.split, e.source, list(e.labels), e.group_key, sorted(e.extra.items())]


def content_key(settings: dict, listed: list, entries: list[Entry], digests: dict[str, str]) -> str:
    """The ingested content's identity: settings, bad listings, and each entry with its file's blake2b."""
    return _key([settings, listed, [_entry_key(e) + [digests[e.source]] for e in entries]])


@contextmanager
def _locked(path: Path):
    """One ingestion of a folder at a time (the ranks of a torchrun launch, two sweeps on one machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _labels(entries: list[Entry], classes: list[str], multilabel: bool) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    if not multilabel:
        return np.array([[index[e.labels[0]]] for e in entries], dtype=np.int64).reshape(-1, 1)
    out = np.zeros((len(entries), len(classes)), dtype=np.uint8)
    for i, e in enumerate(entries):
        out[i, [index[c] for c in e.labels]] = 1
    return out


def _bad_message(own: OwnData, bad: dict[str, str], listing_file: Path | None) -> str:
    shown = "\n".join(f"  {path}: {reason}" for path, reason in list(bad.items())[:SHOWN_BAD])
    more = f"\n  … and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
    where = f" (all listed in {listing_file})" if listing_file else ""
    return (
        f"{len(bad)} bad file(s) in {own.source}{where}:\n{shown}{more}\n"
        "Fix or remove them, or set dataset.on_bad_file=skip to leave them out (they are then recorded in the "
        "result and in skipped.csv)."
    )


def prepare(own: OwnData, size: int, data_dir: str | Path, limits: DecodeLimits | None = None) -> tuple[Path, dict]:
    """The ingested folder of this dataset at ``size`` (ingesting it when missing or stale) and its state."""
    limits = limits or DecodeLimits()
    settings = own.settings(size)
    if limits != DecodeLimits():  # which files are refused depends on the caps; the defaults keep older keys
        settings["limits"] = [limits.max_pixels, limits.max_voxels]
    base = Path(data_dir).expanduser() / "own" / own.name
    folder = base / f"{size}px-{_key(settings)[:12]}"
    spec = DecodeSpec(size, own.spec.dims, own.spec.fit, own.spec.channels, own.spec.window)
    listing = list_source(own)
    entries, bad = listing.entries, dict(listing.bad)
    _assign(own, entries, base)
    bad.update(labels_missing_from_database(entries))
    stats = _stats([e for e in entries if e.source not in bad], bad)
    entries = [e for e in entries if e.source not in bad]
    for role, split in ROLE_SPLIT.items():
        if not any(e.split == split for e in entries):
            problems = f"\n{_bad_message(own, bad, None)}" if bad else ""
            raise DataError(f"{own.name}: no usable item in the {split} split ({ROLE_TEXT[role]}){problems}")
    if shared := groups_on_both_sides(entries):
        log.warning("%d group(s) are in the given database and query splits: %s", len(shared), shared[:5])
    listed = sorted(bad.items())
    fast_key = _key([settings, listed, [_entry_key(e) + list(stats[e.source]) for e in entries]])
    with _locked(base / f".{folder.name}.lock"):
        state_file = folder / "state.json"
        state = json.loads(state_file.read_text()) if (folder / ".complete").exists() else None
        if state and state["fast_key"] == fast_key:
            return folder, state
        if state:
            digests = hash_files([str(e.path) for e in entries], own.workers)
            content = content_key(settings, listed, entries, dict(zip((e.source for e in entries), digests)))
            if content == state["content_key"]:
                log.info("%s: files touched but unchanged; reusing %s", own.name, folder)
                state["fast_key"] = fast_key
                atomic_write_json(state_file, state)
                return folder, state
            log.info("%s: the source changed; ingesting again", own.name)
        by_split: dict[str, list[Entry]] = {}
        for e in entries:
            by_split.setdefault(e.split, []).append(e)
        partial = folder.with_name(folder.name + ".partial")
        log.info("ingesting %d files of %s at %d px into %s", len(entries), own.name, size, folder)
        records = decode_into_partial(partial, by_split, spec, fast_key, own.workers, limits)
        for split, split_entries in by_split.items():
            for e, r in zip(split_entries, records[split]):
                if r["error"]:
                    bad[e.source] = r["error"]
        if bad:
            write_csv(partial / "bad_files.csv", [["path", "reason"], *map(list, sorted(bad.items()))])
            if own.on_bad_file == "error":  # the partial folder stays (a rerun resumes it), and so does the list
                raise DataError(_bad_message(own, bad, partial / "bad_files.csv"))
        good = {s: [e for e, r in zip(es, records[s]) if not r["error"]] for s, es in by_split.items()}
        for role, split in ROLE_SPLIT.items():
            if not good.get(split):
                raise DataError(f"{own.name}: no usable item in the {split} split ({ROLE_TEXT[role]})")
        classes = class_order({c for e in entries for c in e.labels})
        multilabel = listing.multilabel
        digests = {e.source: r["blake2b"] for s in by_split for e, r in zip(by_split[s], records[s])}
        content = content_key(settings, listed, entries, digests)
        state = {
            "name": own.name,
            "fast_key": fast_key,
            "content_key": content,
            "root": str(listing.root),
            "class_names": {str(i): c for i, c in enumerate(classes)},
            "multilabel": multilabel,
            "counts": {s: len(g) for s, g in good.items()},
            "skipped": [{"path": p, "reason": r} for p, r in sorted(bad.items())],
            "settings": settings,
        }
        finalize(
            partial,
            folder,
            by_split,
            records,
            {s: _labels(es, classes, multilabel) for s, es in by_split.items()},
            {s: [stats[e.source] for e in es] for s, es in by_split.items()},
            state,
            listing.extra_columns,
        )
        if bad:  # the list moved with the partial folder into its final place
            log.warning("%s: skipped %d bad file(s), listed in %s", own.name, len(bad), folder / "bad_files.csv")
        return folder, state


def open_own_splits(
    cfg_dataset,
    size: int,
    data_dir: str | Path,
    splits: Iterable[str],
    *,
    volume_side: int | None = None,
    limits: DecodeLimits | None = None,
) -> dict[str, Split]:
    """Ingest once (or find it current), then map each split with its provenance (source files, groups, classes)."""
    own = own_config(cfg_dataset)
    folder, state = prepare(own, size, data_dir, limits)
    out = {}
    for split in splits:
        if split not in state["counts"]:
            raise DataError(f"{own.name} has no {split} split (it has {sorted(state['counts'])})")
        loaded = load_split(folder, own.name, size, split)
        metadata = folder / f"{split}_metadata.csv"
        rows = read_metadata(metadata, ("source", "group"))
        provenance = Provenance(
            content_key=state["content_key"],
            metadata=metadata,
            sources=tuple(r[0] for r in rows),
            groups=np.array([r[1] for r in rows], dtype=object),
            class_names=state["class_names"],
            root=state["root"],
            skipped=tuple(state["skipped"]),
        )
        images = loaded.images
        if volume_side is not None and own.spec.dims == 3 and images.shape[1:] != (volume_side,) * 3:
            images = resized_volumes(folder, split, images, volume_side)
        out[split] = Split(own.name, size, split, images, loaded.labels, provenance)
    return out
