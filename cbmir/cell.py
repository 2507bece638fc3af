"""One cell = (protocol, dataset, size, model): validate, extract (or reuse), evaluate, write the result.

A cell is idempotent: its result lives at a deterministic path, and a finished cell
is skipped unless ``overwrite=true``, so a broken sweep resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from cbmir.callbacks import CellResult, RetrievalEvaluator
from cbmir.data import ROLE_SPLIT, ImageArrayDataset, collate_batched, medmnist_info, open_split
from cbmir.errors import ConfigError, InvalidCellError
from cbmir.ann import search_spec
from cbmir.layout import cell_dir, cell_name, dataset_id, model_id, protocol_id, versions
from cbmir.locks import FileLock, lock_path
from cbmir.loggers import close_loggers, make_loggers
from cbmir.metrics import TIE_RULES
from cbmir.search import METRICS
from cbmir.store import EmbeddingWriter, cache_path, write_sidecar

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before a model is built or a file downloaded."""
    sizes = list(cfg.dataset.sizes)
    if cfg.size not in sizes:
        raise InvalidCellError(f"dataset {cfg.dataset.name} has sizes {sizes}; size={cfg.size} is not one of them")
    if cfg.protocol.metric not in METRICS:
        raise ConfigError(f"protocol.metric must be one of {list(METRICS)}, got {cfg.protocol.metric!r}")
    if cfg.protocol.vote_ties not in TIE_RULES:
        raise ConfigError(f"protocol.vote_ties must be one of {list(TIE_RULES)}, got {cfg.protocol.vote_ties!r}")
    n_database = int(medmnist_info(cfg.dataset.flag)["n_samples"][ROLE_SPLIT["database"]])
    if not isinstance(cfg.k, int) or not 1 <= cfg.k <= n_database:
        raise ConfigError(
            f"k={cfg.k} must be an integer between 1 and the database size ({n_database} for {cfg.dataset.name})"
        )
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {cfg.batch_size!r}")
    if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        raise ConfigError(f"num_workers must be a non-negative integer, got {cfg.num_workers!r}")
    from cbmir.models import families

    if cfg.model.get("family") not in families():
        raise ConfigError(f"model.family {cfg.model.get('family')!r} is not registered; known: {families()}")
    if not isinstance(cfg.max_forward_batch, int) or cfg.max_forward_batch < 1:
        raise ConfigError(f"max_forward_batch must be a positive integer, got {cfg.max_forward_batch!r}")
    volume_spec(cfg)
    search_spec(cfg)
    if cfg.model.get("weights") and not Path(str(cfg.model.weights)).expanduser().exists():
        raise ConfigError(f"model.weights={cfg.model.weights} does not exist")


def volume_spec(cfg: DictConfig):
    """The 3D handling of a volume dataset (``None`` for 2D), validated."""
    if cfg.dataset.get("dims", 2) != 3:
        return None
    from cbmir.extract import VolumeSpec

    return VolumeSpec(aggregate=cfg.dataset.get("aggregate", "concat"), planes=cfg.dataset.get("planes", "axial"))


def volume_side(cfg: DictConfig) -> int | None:
    """Edge of the resampled cube: the cell's size, raised to the protocol's minimum (28 → 32, as the study)."""
    if cfg.dataset.get("dims", 2) != 3:
        return None
    return max(cfg.size, cfg.protocol.min_source_size or 0)


def embedding_fields(
    cfg: DictConfig, identity: dict[str, Any], preprocess: dict[str, Any], role: str
) -> dict[str, Any]:
    """Everything the embeddings of one split depend on: the content key of the cache."""
    fields = {
        "model": model_id(cfg),
        "backbone": identity,
        "preprocess": preprocess,
        "min_source_size": cfg.protocol.min_source_size,
        "precision": resolve_precision(cfg),
        "dataset": cfg.dataset.name,
        "flag": cfg.dataset.flag,
        "size": cfg.size,
        "split": ROLE_SPLIT[role],
    }
    volume = volume_spec(cfg)
    if volume is not None:
        # the resampling method is versioned: change it and every 3D cache entry changes
        fields["volume"] = {
            "aggregate": volume.aggregate,
            "planes": volume.planes,
            "side": volume_side(cfg),
            "resample": "spline3-axis0+bicubic2d, clipped, v1",
        }
    if identity.get("weights") == "random":
        fields["seed"] = cfg.seed
    return fields


def make_loader(split, cfg: DictConfig) -> DataLoader:
    return DataLoader(
        ImageArrayDataset(split),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        collate_fn=collate_batched,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def resolve_precision(cfg: DictConfig) -> str:
    """``auto``: bf16 autocast where a GPU runs the cell, full fp32 on CPU."""
    if cfg.precision != "auto":
        return str(cfg.precision)
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (
        cfg.trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    return "bf16-mixed" if on_gpu else "32-true"


def build_trainer(cfg: DictConfig, callbacks: list, out_dir: Path) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=resolve_precision(cfg),
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        inference_mode=True,
        default_root_dir=str(out_dir),
    )


def _barrier() -> None:
    """Keep the ranks of a torchrun launch in step between cells (decisions depend on files)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def _single_process() -> bool:
    """Not one rank of a torchrun/SLURM multi-process launch (whose ranks must take the same decisions in step)."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) == 1


def _lock(target: Path):
    """The cross-process lock on ``target`` (cbmir.locks); a no-op across the ranks of one multi-process cell."""
    return FileLock(lock_path(target)) if _single_process() else contextlib.nullcontext()


def run_cell(cfg: DictConfig, *, group: str | None = None) -> dict[str, Any] | None:
    """Run one cell; return its result dict on rank 0 (``None`` on other ranks).

    The same cell started twice at once (a resubmitted array task) runs once: the second
    waits for the first's lock and then finds its result.
    """
    validate(cfg)
    with contextlib.ExitStack() as locks:  # every lock released however the cell ends
        locks.enter_context(_lock(cell_dir(cfg)))
        return _run_cell(cfg, locks, group=group)


def _run_cell(cfg: DictConfig, locks: contextlib.ExitStack, *, group: str | None = None) -> dict[str, Any] | None:
    from cbmir.models import build_backbone

    out = cell_dir(cfg)
    result_file = out / "result.json"
    if result_file.exists() and not cfg.overwrite:
        print(f"[cbmir] {cell_name(cfg)}: finished already ({result_file}); overwrite=true recomputes it")
        return json.loads(result_file.read_text())

    t_start = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    side, volume = volume_side(cfg), volume_spec(cfg)
    splits = {
        role: open_split(cfg.dataset, cfg.size, cfg.paths.data_dir, split, volume_side=side)
        for role, split in ROLE_SPLIT.items()
    }
    if cfg.k > len(splits["database"]):
        raise ConfigError(
            f"k={cfg.k} exceeds the {len(splits['database'])} database images of {cfg.dataset.name} at {cfg.size} px"
        )
    backbone = build_backbone(cfg.model)
    spec = backbone.preprocess.as_dict()
    cache_root = Path(cfg.paths.output_dir) / "cache"
    fields = {role: embedding_fields(cfg, backbone.identity, spec, role) for role in ROLE_SPLIT}
    targets = {role: cache_path(cache_root, fields[role]) for role in ROLE_SPLIT}
    # Cells sharing a cache entry (e.g. both protocols) extract it once: the first holds its lock, the others
    # wait and then read it from the cache (locks taken in one order, so two cells never wait on each other).
    for role in sorted(ROLE_SPLIT, key=lambda r: str(targets[r])):
        if not (cfg.use_cache and targets[role].exists()):
            locks.enter_context(_lock(targets[role]))
    todo = [role for role in ROLE_SPLIT if not (cfg.use_cache and targets[role].exists())]
    for role in ROLE_SPLIT:
        if role not in todo:
            print(f"[cbmir] {cell_name(cfg)}: {role} embeddings from cache ({targets[role]})")

    record = {
        "protocol": protocol_id(cfg),
        "dataset": dataset_id(cfg),
        "size": cfg.size,
        "model": model_id(cfg),
        "unit_norm": backbone.unit_norm,
        "cached": {role: role not in todo for role in ROLE_SPLIT},
        "precision": resolve_precision(cfg),
        "versions": versions(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if volume is not None:
        record["volume"] = fields["database"]["volume"]
    cell = CellResult(
        out_dir=out,
        embeddings=targets,
        labels={role: splits[role].labels for role in ROLE_SPLIT},
        k=cfg.k,
        metric=cfg.protocol.metric,
        ties=cfg.protocol.vote_ties,
        standard_metrics=bool(cfg.protocol.standard_metrics),
        record=record,
        started=t_start,
        images={role: splits[role].images for role in ROLE_SPLIT} if cfg.gallery else None,
        class_names=medmnist_info(cfg.dataset.flag).get("label"),
        search_spec=search_spec(cfg),
    )
    loggers = make_loggers(cfg, out, name=cell_name(cfg), group=group) if _rank() == 0 else []
    evaluator = RetrievalEvaluator(cell, loggers)
    try:
        if todo:
            for role in todo:
                targets[role].parent.mkdir(parents=True, exist_ok=True)
            dim = volume.embedding_dim(backbone.dim, side) if volume else backbone.dim
            writer = EmbeddingWriter([targets[r] for r in todo], [len(splits[r]) for r in todo], dim)
            trainer = build_trainer(cfg, [writer, evaluator], out)
            from cbmir.extract import EmbeddingModule

            module = EmbeddingModule(
                backbone,
                min_source_size=None if volume else cfg.protocol.min_source_size,
                volume=volume,
                max_forward_batch=cfg.max_forward_batch,
            )
            if cfg.compile:
                module.backbone = torch.compile(module.backbone)
            record["device"] = str(trainer.strategy.root_device)
            record["world_size"] = trainer.world_size
            if trainer.is_global_zero:
                for role in todo:
                    write_sidecar(targets[role], fields[role])
            trainer.predict(module, dataloaders=[make_loader(splits[r], cfg) for r in todo], return_predictions=False)
        else:
            evaluator.evaluate()
        return evaluator.result
    finally:
        close_loggers(loggers)
        _barrier()
