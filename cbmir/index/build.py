"""Command line: ``python -m cbmir.index build [overrides]`` writes a search index; ``info DIR`` prints its manifest.

Building runs the cell exactly as ``python -m cbmir.run`` does (:func:`cbmir.cell.run.run_cell`: the same
backbone, device-side preprocessing, embedding cache and evaluation), then keeps what the evaluation
throws away: the embeddings of the chosen splits, an exact FAISS index over them, labels, item
metadata, thumbnails and the items' pixels (:mod:`cbmir.index.files`). The config is composed with
Hydra's compose API from ``conf/index.yaml`` (the run's ``config.yaml`` plus an ``index`` block), so
every override of a run works here unchanged and a build starts no Hydra run folder or logging setup.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cbmir.errors import CbmirError, ConfigError
from cbmir.index.files import (
    EMBEDDINGS,
    FAISS_FILE,
    IMAGES,
    ITEMS,
    LABELS,
    PROBE,
    THUMBS,
    finish,
    read_manifest,
    write_items,
)
from cbmir.layout import CONF_DIR, cell_dir, dataset_id, label, model_id, protocol_id, versions

log = logging.getLogger(__name__)

SPLIT_CHOICES = {"database": ("database",), "all": ("database", "query")}
CHUNK = 1024


def compose_config(overrides: list[str]) -> DictConfig:
    """The run's config plus ``index.*``, composed from ``conf/index.yaml`` with the command line's overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="index", overrides=overrides)


def default_dir(cfg: DictConfig) -> Path:
    """``<output_dir>/indexes/<dataset>/<size>/<model>/`` (``<model>+cosine`` for a cosine-ranked index)."""
    name = model_id(cfg) + ("" if cfg.protocol.metric == "l2" else f"+{cfg.protocol.metric}")
    return Path(str(cfg.paths.output_dir)) / "indexes" / dataset_id(cfg) / str(cfg.size) / name


def _evaluated_cell(cfg: DictConfig) -> dict[str, Any]:
    """The cell's result, run (or reused) as ``cbmir.launch.run`` would; rerun when its cached embeddings are gone."""
    from cbmir.cell.run import run_cell

    result = run_cell(cfg)
    if not all(Path(p).is_file() for p in result["embeddings"].values()):
        log.info("the cell's cached embeddings are gone; running the cell again")
        cfg = cfg.copy()
        cfg.overwrite = True
        result = run_cell(cfg)
    return result


def _copy_rows(target: Path, sources: list[np.ndarray], dtype) -> np.ndarray:
    """Concatenate memory-mapped arrays into one ``.npy`` in bounded memory."""
    shape = (sum(len(s) for s in sources), *sources[0].shape[1:])
    out = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=shape)
    row = 0
    for source in sources:
        for start in range(0, len(source), CHUNK):
            block = np.asarray(source[start : start + CHUNK])
            out[row : row + len(block)] = block
            row += len(block)
    out.flush()
    return out


def _thumbnails(target: Path, sources: list[np.ndarray], side: int, volume: bool) -> None:
    """RGB ``side``² thumbnails (a volume's middle slice), resized as the galleries resize their tiles."""
    from cbmir.report.gallery import display_image, resize_tile

    n = sum(len(s) for s in sources)
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(n, side, side, 3))
    row = 0
    for source in sources:
        for start in range(0, len(source), CHUNK):
            block = np.stack([display_image(img, volume=volume) for img in source[start : start + CHUNK]])
            b, h, w, _ = block.shape
            # one resize for the whole block: images side by side along the channel axis
            tiles = resize_tile(block.transpose(1, 2, 0, 3).reshape(h, w, b * 3), side)
            out[row : row + b] = tiles.reshape(side, side, b, 3).transpose(2, 0, 1, 3)
            row += b
    out.flush()


def _items(cfg: DictConfig, splits: dict, class_names) -> list[dict[str, Any]]:
    from cbmir.data import ROLE_SPLIT, file_name
    from cbmir.report.gallery import class_text

    rows, row = [], 0
    for role, split in splits.items():
        origin = split.provenance
        for position in range(len(split)):
            labels = split.labels[position]
            rows.append(
                {
                    "row": row,
                    "split": ROLE_SPLIT[role],
                    "position": position,
                    "source": origin.sources[position]
                    if origin
                    else f"{file_name(cfg.dataset.flag, cfg.size)}:{ROLE_SPLIT[role]}[{position}]",
                    "label": ";".join(str(int(v)) for v in (labels if len(labels) == 1 else np.flatnonzero(labels))),
                    "label_name": class_text(labels, class_names),
                    "group": str(origin.groups[position]) if origin else "",
                }
            )
            row += 1
    return rows


def build_index(cfg: DictConfig) -> Path:
    """Run (or reuse) the cell, then write its index folder; returns the folder."""
    import faiss

    from cbmir.cell.run import volume_side, volume_spec
    from cbmir.data import ROLE_SPLIT, dataset_facts, open_split
    from cbmir.index.files import sha256_file
    from cbmir.index.retrieve import QueryEmbedder
    from cbmir.search.exact import flat_index

    if cfg.index.splits not in SPLIT_CHOICES:
        raise ConfigError(f"index.splits must be one of {list(SPLIT_CHOICES)}, got {cfg.index.splits!r}")
    if not isinstance(cfg.index.thumb, int) or cfg.index.thumb < 8:
        raise ConfigError(f"index.thumb (thumbnail side in px) must be an integer >= 8, got {cfg.index.thumb!r}")
    target = Path(str(cfg.index.dir)).expanduser() if cfg.index.dir else default_dir(cfg)
    result = _evaluated_cell(cfg)
    roles = SPLIT_CHOICES[cfg.index.splits]
    side, volume = volume_side(cfg), volume_spec(cfg)
    splits = {
        role: open_split(cfg.dataset, cfg.size, cfg.paths.data_dir, ROLE_SPLIT[role], volume_side=side)
        for role in roles
    }
    cache = {role: Path(result["embeddings"][role]) for role in roles}
    fields = json.loads(cache["database"].with_suffix(".json").read_text())  # the cache's own record of its key
    origin = splits["database"].provenance
    class_names = origin.class_names if origin else dataset_facts(cfg.dataset).class_names
    sample = splits["database"].images
    rgb = volume is None and sample.ndim == 4 and sample.shape[-1] == 3

    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    embeddings = _copy_rows(
        partial / EMBEDDINGS, [np.load(cache[r], mmap_mode="r", allow_pickle=False) for r in roles], np.float32
    )
    labels = np.concatenate([splits[r].labels for r in roles]).astype(np.int64)
    np.save(partial / LABELS, labels)
    write_items(partial / ITEMS, _items(cfg, splits, class_names))
    images = [splits[r].images for r in roles]
    thumb = min(cfg.index.thumb, int(sample.shape[-2]))
    _thumbnails(partial / THUMBS, images, thumb, volume is not None)
    if cfg.index.images:
        _copy_rows(partial / IMAGES, images, np.uint8)
    np.save(partial / PROBE, np.array(images[0][0]))
    from cbmir.index.text_query import add_joint_vectors  # hook: text queries need the joint-space vectors

    text = add_joint_vectors(cfg, partial, roles)
    faiss.write_index(flat_index(embeddings, cfg.protocol.metric), str(partial / FAISS_FILE))

    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_id(cfg),
        "model_label": label("model", str(cfg.model.name)),
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "backbone": fields["backbone"],
        "preprocess": fields["preprocess"],
        "dataset": dataset_id(cfg),
        "dataset_label": str(cfg.dataset.get("label") or label("dataset", str(cfg.dataset.name))),
        "size": int(cfg.size),
        "protocol": protocol_id(cfg),
        "metric": str(cfg.protocol.metric),
        "min_source_size": cfg.protocol.min_source_size,
        "volume": fields.get("volume"),
        "decode": {
            "dims": int(cfg.dataset.get("dims", 2)),
            "fit": str(cfg.dataset.get("fit", "pad")),
            "channels": "3" if rgb else "1",
            "window": list(cfg.dataset.window) if cfg.dataset.get("window") else None,
        },
        "seed": int(cfg.seed),
        "precision": result["precision"],
        "embedding_dim": int(embeddings.shape[1]),
        "unit_norm": bool(result["unit_norm"]),
        "n_items": int(len(embeddings)),
        "splits": {ROLE_SPLIT[r]: len(splits[r]) for r in roles},
        "class_names": class_names,
        "multilabel": bool(labels.shape[1] > 1),
        "dataset_root": origin.root if origin else None,
        "thumb_size": thumb,
        "probe_row": 0,
        "faiss": {"index": "IndexFlatL2" if cfg.protocol.metric == "l2" else "IndexFlatIP (unit vectors)"},
        "evaluation": {
            "result": str((cell_dir(cfg) / "result.json").resolve()),
            "k": result["k"],
            "metrics": result["metrics"],
            "cell": f"{result['protocol']}/{result['dataset']}/{result['size']}/{result['model']}",
        },
        "text": text,
        "embedding_cache": {r: {"path": str(cache[r]), "sha256": sha256_file(cache[r])} for r in roles},
        "versions": versions(),
    }
    del embeddings
    # the query path must give the evaluation's vectors: refuse an index that a reopened model would not answer
    QueryEmbedder(manifest).check(
        np.load(partial / PROBE, allow_pickle=False),
        np.load(partial / EMBEDDINGS, mmap_mode="r", allow_pickle=False)[0],
    )
    folder = finish(partial, target.resolve(), manifest)
    log.info("index of %d items written to %s", manifest["n_items"], folder)
    return folder


def info(folder: Path) -> str:
    """The manifest, as JSON."""
    return json.dumps(read_manifest(folder), indent=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cbmir index", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run (or reuse) a cell and write its search index")
    b.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m cbmir.run (index.dir=, ...)")
    i = sub.add_parser("info", help="print an index's manifest")
    i.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[cbmir] %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        if args.command == "info":
            print(info(args.folder))
        else:
            print(build_index(compose_config(args.overrides)))
    except CbmirError as exc:
        print(f"cbmir: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
