"""``cbmir index add DIR PATH…`` and ``cbmir index remove DIR --source GLOB | --group ID | --row N…``.

An add lists its paths with the dataset's own listers (:func:`cbmir.data.folder.list_folder`,
:func:`cbmir.data.manifest.read_manifest`; a path inside the dataset root is listed as the build
listed it, so its label, split and group are the build's), decodes them with the ingestion's
decoder (:func:`cbmir.data.decode.decode_chunk`) at the index's decoding settings, and embeds only
the new items with the index's own model (:class:`cbmir.index.retrieve.QueryEmbedder`, checked
against the index's probe first). A remove selects items and writes a generation without them.
Both write a whole new generation (:func:`cbmir.index.writer.write_generation`); a remove then
prunes every older generation (they still hold the removed items) unless ``--keep`` says otherwise.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.data.entries import Entry, inside
from cbmir.errors import ConfigError, DataError
from cbmir.index import approx
from cbmir.index.files import IndexFolder, open_index
from cbmir.index.generations import adopt_legacy, writing
from cbmir.index.phi import describe, scan_headers
from cbmir.index.privacy import Privacy, privacy_of
from cbmir.index.writer import Content, Rows, item_row, synthetic_probe, thumbnailer, write_generation

log = logging.getLogger(__name__)

#: Bad files named in an error message.
SHOWN = 20


def add_parsers(sub: Any) -> None:
    a = sub.add_parser("add", help="embed new files into a new generation of an index (only the new ones)")
    a.add_argument("folder", type=Path, help="the index folder")
    a.add_argument("paths", type=Path, nargs="+", help="image files, class folders (as the build's) or a manifest")
    a.add_argument("--label", help="the class of image files given one by one outside the dataset root")
    a.add_argument("--key-file", type=Path, help="the pseudonym key (default: the one the build used)")
    a.add_argument("--keep", type=int, help="generations kept (default: the build's index.keep_generations)")
    a.add_argument("--device", help="torch device for the model (default: cuda if available, else cpu)")
    a.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    a.add_argument("--skip-bad", action="store_true", help="leave out files that cannot be decoded")
    r = sub.add_parser("remove", help="write a new generation without the selected items")
    r.add_argument("folder", type=Path, help="the index folder")
    how = r.add_mutually_exclusive_group(required=True)
    how.add_argument("--source", action="append", help="a glob over source paths relative to the dataset root")
    how.add_argument("--group", action="append", help="a group's pseudonym or (with the key) its original value")
    how.add_argument("--row", type=int, nargs="+", help="row numbers of the current generation")
    r.add_argument("--key-file", type=Path, help="the pseudonym key (default: the one the build used)")
    r.add_argument("--keep", type=int, default=1, help="generations kept (default 1: none holds the removed items)")


def run(args: argparse.Namespace) -> str:
    if args.keep is not None and args.keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {args.keep}")
    if args.command == "add":
        done = add_items(
            args.folder, args.paths, label=args.label, key_file=args.key_file, keep=args.keep,
            device=args.device, batch_size=args.batch_size, skip_bad=args.skip_bad,
        )  # fmt: skip
    else:
        done = remove_items(
            args.folder, sources=args.source, groups=args.group, rows=args.row, key_file=args.key_file, keep=args.keep
        )
    return f"{args.folder}: generation {done['generation']}, {done['items']} items ({done['summary']})"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _list(manifest: dict, paths: list[Path], label: str | None) -> list[Entry]:
    """The entries the paths stand for, listed as the build listed its source; bad listings are errors."""
    from cbmir.data.decode import file_format
    from cbmir.data.folder import list_folder
    from cbmir.data.manifest import read_manifest

    source = manifest.get("source") or {}
    root = Path(source["root"]) if source.get("root") else None
    full: list[Entry] | None = None
    out: list[Entry] = []
    bad: dict[str, str] = {}
    for path in paths:
        path = path.expanduser().absolute()
        if not path.exists():
            raise DataError(f"{path} does not exist")
        if path.is_file() and path.suffix.lower() == ".csv":
            listing = read_manifest(path)
            out += listing.entries
            bad.update(listing.bad)
        elif root is not None and inside(root, path):
            if full is None:
                listing = list_folder(root) if source.get("kind") != "manifest" else read_manifest(source["manifest"])
                full = listing.entries
            found = [e for e in full if e.path.resolve() == path.resolve() or inside(path, e.path)]
            if not found:
                raise DataError(f"{path} lies in the dataset root {root} but lists no image there")
            out += found
        elif path.is_dir():
            listing = list_folder(path)
            for e in listing.entries:
                e.source = f"{path.name}/{e.source}"
            out += listing.entries
            bad.update({f"{path.name}/{k}": v for k, v in listing.bad.items()})
        else:
            if file_format(path) is None:
                bad[str(path)] = "not a supported image (PNG, JPEG, TIFF, BMP, DICOM, NIfTI)"
                continue
            if not label:
                raise ConfigError(f"{path}: a file outside the dataset root needs its class: --label NAME")
            out.append(Entry(path, path.name, (label,)))
    if bad:
        shown = "\n  ".join(f"{k}: {v}" for k, v in list(bad.items())[:SHOWN])
        raise DataError(f"{len(bad)} path(s) cannot be added:\n  {shown}")
    return out


def _label_rows(entries: list[Entry], manifest: dict) -> np.ndarray:
    names = {name: int(i) for i, name in (manifest.get("class_names") or {}).items()}
    unknown = sorted({c for e in entries for c in e.labels if c not in names})
    if unknown:
        raise DataError(f"unknown class(es) {unknown}; this index knows {sorted(names)} (a new class needs a rebuild)")
    if not manifest.get("multilabel"):
        return np.array([[names[e.labels[0]]] for e in entries], dtype=np.int64).reshape(-1, 1)
    out = np.zeros((len(entries), len(names)), dtype=np.int64)
    for i, e in enumerate(entries):
        out[i, [names[c] for c in e.labels]] = 1
    return out


def _decode(entries: list[Entry], embedder, skip_bad: bool) -> tuple[list[Entry], np.ndarray]:
    """The ingestion's decoder at the index's settings (volumes resized to the index's side)."""
    from cbmir.data.decode import decode_chunk

    results = decode_chunk([str(e.path) for e in entries], embedder.spec)
    bad = {e.source: r["error"] for e, (_, r) in zip(entries, results) if r["error"]}
    if bad and not skip_bad:
        shown = "\n  ".join(f"{k}: {v}" for k, v in list(bad.items())[:SHOWN])
        raise DataError(f"{len(bad)} file(s) cannot be decoded (--skip-bad leaves them out):\n  {shown}")
    kept = [(e, pixels) for e, (pixels, r) in zip(entries, results) if not r["error"]]
    if not kept:
        raise DataError("no file to add could be decoded")
    pixels = np.stack([p for _, p in kept])
    if embedder.side is not None and pixels.shape[1] != embedder.side:
        from cbmir.data.volumes import resize_volumes

        pixels = resize_volumes(pixels, embedder.side)
    return [e for e, _ in kept], pixels


def _updated(manifest: dict, items: list[dict], change: dict) -> dict:
    splits: dict[str, int] = {}
    for it in items:
        splits[it["split"]] = splits.get(it["split"], 0) + 1
    return {**manifest, "splits": splits, "changed": change["at"], "history": [*manifest.get("history", []), change]}


def _probe(index: IndexFolder, embedder=None) -> tuple[np.ndarray, dict]:
    """The probe of the next generation: the synthetic one kept; an older index's item probe replaced by one."""
    m = index.manifest
    if m.get("probe_embedding") is not None:
        return np.asarray(index.probe), {"probe_embedding": m["probe_embedding"]}
    from cbmir.index.retrieve import QueryEmbedder

    if embedder is None:
        embedder = QueryEmbedder(m)
        embedder.check(index.probe, index.probe_vector)
    probe = synthetic_probe(tuple(np.asarray(index.probe).shape))
    return probe, {"probe_embedding": embedder.embed(probe[None])[0].tolist()}


def _approximate(content: Content, index: IndexFolder, ids: np.ndarray, edit) -> None:
    """An inverted-file index edited through FAISS's ids; recall and drift re-measured against the build's."""
    previous = index.manifest["approximate"]
    content.faiss_index = edit
    content.extra[approx.IDS] = ids

    def describe(faiss_index, vectors) -> dict:
        block = approx.record(faiss_index, vectors, ids, index.manifest["metric"], previous["at_build"])
        return {"approximate": {**block, "factory": previous["factory"]}}

    content.describe = describe


@contextmanager
def changing(folder: Path) -> Iterator[tuple[Path, IndexFolder]]:
    """An index folder held for one change (add or remove): its writer lock taken, an index from before
    generations adopted, its current generation opened."""
    root = Path(folder).expanduser().resolve()
    with writing(root):
        adopt_legacy(root)
        yield root, open_index(root)


def _flat(metric: str):
    from cbmir.search.exact import flat_index

    return lambda vectors: flat_index(np.asarray(vectors), metric)


def add_items(
    folder: Path,
    paths: list[Path],
    *,
    label: str | None = None,
    key_file: Path | None = None,
    keep: int | None = None,
    device: str | None = None,
    batch_size: int = 32,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Embed the new items among ``paths`` into a new generation; returns what was done (``embedded`` counted)."""
    from cbmir.data import ROLE_SPLIT
    from cbmir.index.retrieve import QueryEmbedder

    with changing(folder) as (root, index):
        m = index.manifest
        privacy = privacy_of(m, key_file)
        entries = _list(m, list(paths), label)
        present = {it["source"] for it in index.items} if privacy.mode != "none" else set()
        new, seen = [], set(present)
        for e in entries:
            stored = privacy.source(e.source)
            if stored and stored in seen:
                continue
            seen.add(stored)
            new.append(e)
        if not new:
            raise DataError(f"every given item is in the index already ({len(entries)} listed)")
        _label_rows(new, m)  # unknown classes refused before the model is built
        embedder = QueryEmbedder(m, device=device)
        embedder.check(index.probe, index.probe_vector)
        probe, probe_record = _probe(index, embedder)
        new, pixels = _decode(new, embedder, skip_bad)
        labels = _label_rows(new, m)
        vectors = np.concatenate([embedder.embed(pixels[i : i + batch_size]) for i in range(0, len(new), batch_size)])
        scan = scan_headers(str(e.path) for e in new)
        log.info("%s", describe(scan.summary()))
        allow = bool((m.get("settings") or {}).get("allow_burned_in"))
        withheld = {} if allow else scan.burned_in
        rows = [
            item_row(e.split or ROLE_SPLIT["database"], -1, e.source, labels[i], m.get("class_names"),
                     e.group_key, privacy, withheld.get(str(e.path), ""))
            for i, e in enumerate(new)
        ]  # fmt: skip
        zero = np.array([bool(r["withheld"]) for r in rows])
        volume = m.get("volume") is not None
        change = {"change": "add", "at": _now(), "items": len(new)}
        manifest = _updated({**m, "headers": scan.merge(m.get("headers") or {})}, [*index.items, *rows], change)
        content = Content(
            embeddings=[Rows(index.embeddings), Rows(vectors)],
            labels=np.concatenate([index.labels, labels]),
            items=[*index.items, *rows],
            thumbs=[Rows(index.thumbs), Rows(pixels, transform=thumbnailer(int(m["thumb_size"]), volume), zero=zero)],
            images=None if index.images is None else [Rows(index.images), Rows(pixels, zero=zero)],
            probe=probe,
            manifest={**manifest, **probe_record},
            faiss_index=_flat(m["metric"]),
        )
        if index.joint is not None:  # text queries: the new items' joint image-text vectors too
            from cbmir.index.text_query import embed_joint, joint_embedder

            joint = joint_embedder(m, device=device)
            joint.check(index.probe, np.asarray(m["text"]["probe_embedding"], dtype=np.float32))
            content.joint = [Rows(index.joint), Rows(embed_joint(joint, pixels, batch_size))]
        if index.ids is not None:
            new_ids = index.ids[-1] + 1 + np.arange(len(new), dtype=np.int64)
            _approximate(content, index, np.concatenate([index.ids, new_ids]),
                         lambda _: approx.added(index.faiss_index, vectors, new_ids, m["metric"]))  # fmt: skip
        keep = keep or int((m.get("settings") or {}).get("keep_generations", 2))
        generation = write_generation(root, content, keep)
    skipped = len(entries) - len(new)
    summary = f"{len(new)} added and embedded, {skipped} already present"
    summary += f", pixels of {len(withheld)} withheld" if withheld else ""
    log.info("%s", summary)
    return {"generation": generation.name, "items": len(content.items), "embedded": len(new), "summary": summary}


def select(index: IndexFolder, privacy: Privacy, *, sources=None, groups=None, rows=None) -> np.ndarray:
    """A mask of the items the selection names; a selection matching nothing is an error naming it."""
    n = len(index)
    mask = np.zeros(n, dtype=bool)
    if rows:
        outside = [r for r in rows if not 0 <= r < n]
        if outside:
            raise DataError(f"--row {' '.join(map(str, outside))}: no such row (the index has rows 0..{n - 1})")
        mask[rows] = True
    for group in groups or []:
        wanted = {group, privacy.group(group)} if privacy.key is not None or privacy.mode == "plain" else {group}
        hit = np.array([it["group"] in wanted and it["group"] != "" for it in index.items])
        if not hit.any():
            raise DataError(f"--group {group} matches no item of {index.folder.parent}")
        mask |= hit
    root = (index.manifest.get("source") or {}).get("root")
    for pattern in sources or []:
        stored = {pattern} if "*" not in pattern and "?" not in pattern and "[" not in pattern else set()
        if privacy.key is not None and root:  # the key turns files matched on disk into their pseudonyms
            stored |= {privacy.source(p.relative_to(root).as_posix()) for p in Path(root).glob(pattern) if p.is_file()}
        hit = np.array([bool(it["source"]) and (it["source"] in stored or fnmatch.fnmatchcase(it["source"], pattern))
                        for it in index.items])  # fmt: skip
        if not hit.any():
            raise DataError(f"--source {pattern} matches no item of {index.folder.parent}")
        mask |= hit
    return mask


def remove_items(
    folder: Path, *, sources=None, groups=None, rows=None, key_file: Path | None = None, keep: int | None = 1
) -> dict[str, Any]:
    """Write a generation without the selected items (pruning older ones down to ``keep``)."""
    with changing(folder) as (root, index):
        m = index.manifest
        privacy = privacy_of(m, key_file, need_key=False)
        mask = select(index, privacy, sources=sources, groups=groups, rows=rows)
        kept = np.flatnonzero(~mask)
        if not len(kept):
            raise DataError(f"the selection matches all {len(index)} items; an index cannot be emptied (rebuild it)")
        items = [index.items[i] for i in kept]
        probe, probe_record = _probe(index)
        change = {"change": "remove", "at": _now(), "items": int(mask.sum())}
        content = Content(
            embeddings=[Rows(index.embeddings, kept)],
            labels=index.labels[kept],
            items=items,
            thumbs=[Rows(index.thumbs, kept)],
            images=None if index.images is None else [Rows(index.images, kept)],
            probe=probe,
            manifest={**_updated(m, items, change), **probe_record},
            faiss_index=_flat(m["metric"]),
            joint=None if index.joint is None else [Rows(index.joint, kept)],
        )
        if index.ids is not None:
            _approximate(content, index, index.ids[kept], lambda _: approx.removed(index.faiss_index, index.ids[mask]))
        generation = write_generation(root, content, keep or 1)
    summary = f"{int(mask.sum())} removed"
    log.info("%s", summary)
    return {"generation": generation.name, "items": len(items), "removed": int(mask.sum()), "summary": summary}
