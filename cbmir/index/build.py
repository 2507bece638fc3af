"""Command line: ``cbmir index build [overrides] | add DIR PATH… | remove DIR … | info DIR``: a search index.

Building runs the cell exactly as ``python -m cbmir.run`` does (:func:`cbmir.cell.run.run_cell`: the same
backbone, device-side preprocessing, embedding cache and evaluation), then keeps what the evaluation
throws away: the embeddings of the chosen splits, an exact FAISS index over them, labels, item
metadata, thumbnails and the items' pixels (:mod:`cbmir.index.files`). The config is composed with
Hydra's compose API from ``conf/index.yaml`` (the run's ``config.yaml`` plus an ``index`` block), so
every override of a run works here unchanged and a build starts no Hydra run folder or logging setup.
Each build, add and remove writes a new generation of the index folder (:mod:`cbmir.index.generations`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cbmir.errors import CbmirError, ConfigError
from cbmir.index.approx import IDS, check_factory
from cbmir.index.generations import adopt_legacy, writing
from cbmir.index.phi import describe, scan_headers
from cbmir.index.privacy import MODES, Privacy, privacy_for_build
from cbmir.index.writer import Content, Rows, item_row, synthetic_probe, thumbnailer, write_generation
from cbmir.layout import CONF_DIR, cell_dir, dataset_id, label, model_id, protocol_id, versions

log = logging.getLogger(__name__)

SPLIT_CHOICES = {"database": ("database",), "all": ("database", "query")}


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


def _source_files(origin) -> list[str]:
    """The absolute paths of own data's source files (none for MedMNIST)."""
    if origin is None:
        return []
    return [s if Path(s).is_absolute() else str(Path(origin.root) / s) for s in origin.sources]


def _items(cfg: DictConfig, splits: dict, class_names, privacy: Privacy, withheld: dict[str, str]) -> list[dict]:
    from cbmir.data import ROLE_SPLIT, file_name

    rows = []
    for role, split in splits.items():
        origin = split.provenance
        files = _source_files(origin)
        for position in range(len(split)):
            if origin:
                source, group = origin.sources[position], str(origin.groups[position])
                reason, kept = withheld.get(files[position], ""), privacy
            else:  # a public dataset's position, not a patient's file
                source = f"{file_name(cfg.dataset.flag, cfg.size)}:{ROLE_SPLIT[role]}[{position}]"
                group, reason, kept = "", "", Privacy("plain")
            labels = split.labels[position]
            rows.append(item_row(ROLE_SPLIT[role], position, source, labels, class_names, group, kept, reason))
    return rows


def check_index_settings(cfg: DictConfig) -> None:
    """Every ``index.*`` key checked before any work."""
    i = cfg.index
    if i.splits not in SPLIT_CHOICES:
        raise ConfigError(f"index.splits must be one of {list(SPLIT_CHOICES)}, got {i.splits!r}")
    if not isinstance(i.thumb, int) or i.thumb < 8:
        raise ConfigError(f"index.thumb (thumbnail side in px) must be an integer >= 8, got {i.thumb!r}")
    if not isinstance(i.keep_generations, int) or isinstance(i.keep_generations, bool) or i.keep_generations < 1:
        raise ConfigError(f"index.keep_generations must be an integer >= 1, got {i.keep_generations!r}")
    if not isinstance(i.allow_burned_in, bool):
        raise ConfigError(f"index.allow_burned_in must be true or false, got {i.allow_burned_in!r}")
    check_factory(i.faiss, i.nprobe)
    if i.privacy not in MODES:
        raise ConfigError(f"index.privacy must be one of {list(MODES)}, got {i.privacy!r}")


def _approximate(content: Content, factory: str, nprobe: int, seed: int) -> None:
    """An inverted-file index in place of the exact one: trained, ids 0..N-1, recall and quantiser recorded."""
    from cbmir.index import approx

    metric = content.manifest["metric"]
    n = len(content.items)
    content.faiss_index = lambda vectors: approx.train(np.asarray(vectors), metric, factory, nprobe, seed)
    content.extra[IDS] = np.arange(n, dtype=np.int64)

    def describe(index, vectors) -> dict:
        block = approx.record(index, vectors, content.extra[IDS], metric, None)
        return {"approximate": {**block, "factory": factory}}

    content.describe = describe


def build_index(cfg: DictConfig) -> Path:
    """Run (or reuse) the cell, then write its index as a new generation of the index folder; returns the folder."""
    from cbmir.cell.spec import build_spec
    from cbmir.data import ROLE_SPLIT, dataset_facts, open_split
    from cbmir.index.files import sha256_file
    from cbmir.index.retrieve import QueryEmbedder
    from cbmir.index.text_query import joint_embedder, joint_vectors, record_probe
    from cbmir.search.exact import flat_index

    check_index_settings(cfg)
    target = (Path(str(cfg.index.dir)).expanduser() if cfg.index.dir else default_dir(cfg)).resolve()
    privacy, key_path = privacy_for_build(cfg.index.privacy, cfg.index.key_file, target)
    result = _evaluated_cell(cfg)
    roles = SPLIT_CHOICES[cfg.index.splits]
    spec = build_spec(cfg)
    side, volume = spec.volume_side, spec.volume
    splits = {
        role: open_split(
            cfg.dataset,
            cfg.size,
            cfg.paths.data_dir,
            ROLE_SPLIT[role],
            volume_side=side,
            limits=spec.decode,
        )
        for role in roles
    }
    cache = {role: Path(result["embeddings"][role]) for role in roles}
    fields = json.loads(cache["database"].with_suffix(".json").read_text())  # the cache's own record of its key
    origin = splits["database"].provenance
    class_names = origin.class_names if origin else dataset_facts(cfg.dataset).class_names
    sample = splits["database"].images
    rgb = volume is None and sample.ndim == 4 and sample.shape[-1] == 3

    scan = scan_headers(p for r in roles for p in _source_files(splits[r].provenance))
    log.info("%s", describe(scan.summary()))
    withheld = {} if cfg.index.allow_burned_in else scan.burned_in
    if withheld:
        log.warning("%d file(s) may show burned-in text: vectors indexed, pixels and thumbnails withheld "
                    "(index.allow_burned_in=true keeps them)", len(withheld))  # fmt: skip
    items = _items(cfg, splits, class_names, privacy, withheld)
    zero = np.array([bool(it["withheld"]) for it in items])
    labels = np.concatenate([splits[r].labels for r in roles]).astype(np.int64)
    images = [splits[r].images for r in roles]
    offsets = np.cumsum([0] + [len(x) for x in images])
    zeros = [zero[offsets[i] : offsets[i + 1]] for i in range(len(images))]
    thumb = min(cfg.index.thumb, int(sample.shape[-2]))
    embeddings = [Rows(np.load(cache[r], mmap_mode="r", allow_pickle=False)) for r in roles]

    kind = str(cfg.dataset.get("kind", "medmnist"))
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
        "embedding_dim": int(embeddings[0].source.shape[1]),
        "unit_norm": bool(result["unit_norm"]),
        "splits": {ROLE_SPLIT[r]: len(splits[r]) for r in roles},
        "class_names": class_names,
        "multilabel": bool(labels.shape[1] > 1),
        "source": {
            "kind": kind,
            "root": (origin.root if origin else None) if privacy.mode != "none" else None,
            "manifest": str(cfg.dataset.path) if kind == "manifest" and privacy.mode != "none" else None,
        },
        "thumb_size": thumb,
        "privacy": privacy.record(key_path),
        "headers": scan.summary(),
        "settings": {
            "keep_generations": int(cfg.index.keep_generations),
            "allow_burned_in": bool(cfg.index.allow_burned_in),
            "images": bool(cfg.index.images),
        },
        "faiss": {"index": "IndexFlatL2" if cfg.protocol.metric == "l2" else "IndexFlatIP (unit vectors)"}
        if cfg.index.faiss == "Flat"
        else {"index": str(cfg.index.faiss), "nprobe": int(cfg.index.nprobe)},
        "evaluation": {
            "result": str((cell_dir(cfg) / "result.json").resolve()),
            "k": result["k"],
            "metrics": result["metrics"],
            "cell": f"{result['protocol']}/{result['dataset']}/{result['size']}/{result['model']}",
        },
        "embedding_cache": {r: {"path": str(cache[r]), "sha256": sha256_file(cache[r])} for r in roles},
        "history": [],
        "versions": versions(),
    }
    # the query path must give the evaluation's vectors: refuse an index that a reopened model would not answer
    embedder = QueryEmbedder(manifest)
    embedder.check(np.asarray(images[0][0]), np.asarray(embeddings[0].source[0]))
    probe = synthetic_probe(tuple(sample.shape[1:]))
    manifest["probe_embedding"] = embedder.embed(probe[None])[0].tolist()
    text, joint = joint_vectors(cfg, roles)  # vision-language models: the vectors that text queries search
    if joint is not None:
        text = record_probe(text, joint_embedder({**manifest, "text": text}), probe, (images[0][0], joint[0]))
    manifest["text"] = text
    content = Content(
        embeddings=embeddings,
        labels=labels,
        items=items,
        thumbs=[Rows(x, transform=thumbnailer(thumb, volume is not None), zero=zeros[i]) for i, x in enumerate(images)],
        images=[Rows(x, zero=zeros[i]) for i, x in enumerate(images)] if cfg.index.images else None,
        probe=probe,
        manifest={**manifest, "history": [{"change": "build", "at": manifest["created"], "items": len(items)}]},
        faiss_index=lambda vectors: flat_index(np.asarray(vectors), cfg.protocol.metric),
        joint=None if joint is None else [Rows(joint)],
    )
    if cfg.index.faiss != "Flat":
        _approximate(content, str(cfg.index.faiss), int(cfg.index.nprobe), int(cfg.seed))
    with writing(target):
        adopt_legacy(target)
        folder = write_generation(target, content, int(cfg.index.keep_generations))
    log.info("index of %d items written to %s (generation %s)", len(items), target, folder.name)
    return target


def main(argv: list[str] | None = None) -> int:
    from cbmir.index import edit, info

    parser = argparse.ArgumentParser(prog="cbmir index", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run (or reuse) a cell and write its search index")
    b.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m cbmir.run (index.dir=, ...)")
    edit.add_parsers(sub)
    i = sub.add_parser("info", help="an index's generations, counts, dates, header scan and recall")
    i.add_argument("folder", type=Path)
    i.add_argument("--json", action="store_true", help="print the current manifest and the generations as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[cbmir] %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        if args.command == "info":
            print(info.info(args.folder, as_json=args.json))
        elif args.command == "build":
            print(build_index(compose_config(args.overrides)))
        else:
            print(edit.run(args))
    except CbmirError as exc:
        print(f"cbmir: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
