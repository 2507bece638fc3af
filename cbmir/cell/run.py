"""One cell = (protocol, dataset, size, model): validate, extract (or reuse), evaluate, write the result.

A cell is idempotent: its result lives at a deterministic path, and a finished cell
is skipped unless ``overwrite=true``, so a broken sweep resumes where it stopped.
One process computes a cell at a time (a lock file in its folder, another per cache entry);
a cache entry is reused only when its recorded size and checksum match.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from cbmir.cell.evaluate import CellResult, RetrievalEvaluator
from cbmir.cell.loggers import close_loggers, make_loggers
from cbmir.cell.store import EmbeddingWriter, cache_path, entry_problem, reusable
from cbmir.data import ROLE_SPLIT, ImageArrayDataset, collate_batched, dataset_facts, open_splits
from cbmir.errors import ConfigError, InvalidCellError, LockBusyError, NonFiniteEmbeddingError
from cbmir.layout import cell_dir, cell_name, dataset_id, model_id, protocol_id, versions
from cbmir.logs import get_logger
from cbmir.metrics.retrieval import TIE_RULES
from cbmir.safety import faults
from cbmir.safety.files import require_space
from cbmir.safety.locks import FileLock, LockTimeout, lock_path
from cbmir.safety.secrets import redact
from cbmir.search.approximate import search_spec
from cbmir.search.exact import METRICS
from cbmir.stats.bootstrap import StatsSettings

log = get_logger(__name__)


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before a model is built or a file downloaded."""
    facts = dataset_facts(cfg.dataset)
    if not isinstance(cfg.size, int) or cfg.size < 1:
        raise InvalidCellError(f"size must be a positive integer, got {cfg.size!r}")
    if facts.sizes is not None and cfg.size not in facts.sizes:
        sizes = list(facts.sizes)
        raise InvalidCellError(f"dataset {cfg.dataset.name} has sizes {sizes}; size={cfg.size} is not one of them")
    if cfg.protocol.metric not in METRICS:
        raise ConfigError(f"protocol.metric must be one of {list(METRICS)}, got {cfg.protocol.metric!r}")
    if cfg.protocol.vote_ties not in TIE_RULES:
        raise ConfigError(f"protocol.vote_ties must be one of {list(TIE_RULES)}, got {cfg.protocol.vote_ties!r}")
    n_database = facts.n_database
    if not isinstance(cfg.k, int) or not 1 <= cfg.k <= (n_database or cfg.k):
        raise ConfigError(
            f"k={cfg.k} must be an integer between 1 and the database size ({n_database} for {cfg.dataset.name})"
        )
    if cfg.protocol.get("exclude_same_group") and facts.kind == "medmnist":
        raise ConfigError("protocol.exclude_same_group needs groups (patients): own data (dataset=folder|manifest)")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {cfg.batch_size!r}")
    if cfg.num_workers != "auto" and (not isinstance(cfg.num_workers, int) or cfg.num_workers < 0):
        raise ConfigError(f"num_workers must be auto or a non-negative integer, got {cfg.num_workers!r}")
    from cbmir.models import families

    if cfg.model.get("family") not in families():
        raise ConfigError(f"model.family {cfg.model.get('family')!r} is not registered; known: {families()}")
    if not isinstance(cfg.max_forward_batch, int) or cfg.max_forward_batch < 1:
        raise ConfigError(f"max_forward_batch must be a positive integer, got {cfg.max_forward_batch!r}")
    floor = cfg.get("min_forward_batch", 1)
    if not isinstance(floor, int) or not 1 <= floor <= cfg.max_forward_batch:
        raise ConfigError(f"min_forward_batch must be an integer in [1, max_forward_batch], got {floor!r}")
    wait = cfg.get("lock_wait")
    if wait is not None and (not isinstance(wait, (int, float)) or wait < 0):
        raise ConfigError(f"lock_wait must be null (wait while the holder runs) or seconds >= 0, got {wait!r}")
    volume_spec(cfg)
    if cfg.protocol.get("kind") in ("text", "zeroshot"):  # hook: text protocols (cbmir.cell.text)
        from cbmir.cell.text import validate_text

        validate_text(cfg)
    StatsSettings.from_config(cfg.get("stats"))
    search_spec(cfg)
    if cfg.model.get("weights") and not Path(str(cfg.model.weights)).expanduser().exists():
        raise ConfigError(f"model.weights={cfg.model.weights} does not exist")


def volume_spec(cfg: DictConfig):
    """The 3D handling of a volume dataset (``None`` for 2D), validated."""
    if cfg.dataset.get("dims", 2) != 3:
        return None
    from cbmir.cell.extract import VolumeSpec

    return VolumeSpec(aggregate=cfg.dataset.get("aggregate", "concat"), planes=cfg.dataset.get("planes", "axial"))


def volume_side(cfg: DictConfig) -> int | None:
    """Edge of the resampled cube: the cell's size, raised to the protocol's minimum (28 → 32, as the study)."""
    if cfg.dataset.get("dims", 2) != 3:
        return None
    return max(cfg.size, cfg.protocol.min_source_size or 0)


def embedding_fields(
    cfg: DictConfig, identity: dict[str, Any], preprocess: dict[str, Any], role: str, content: str | None = None
) -> dict[str, Any]:
    """Everything the embeddings of one split depend on: the content key of the cache.

    ``content`` is own data's ingested content key (every file's bytes, label, split and decoding setting).
    """
    fields = {
        "model": model_id(cfg),
        "backbone": identity,
        "preprocess": preprocess,
        "min_source_size": cfg.protocol.min_source_size,
        "precision": resolve_precision(cfg),
        "dataset": cfg.dataset.name,
        "flag": cfg.dataset.get("flag"),
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
    if content is not None:
        fields["content"] = content
    return fields


def make_loader(split, cfg: DictConfig) -> DataLoader:
    return DataLoader(
        ImageArrayDataset(split),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=resolve_num_workers(cfg),
        collate_fn=collate_batched,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def resolve_num_workers(cfg: DictConfig) -> int:
    """``auto``: no worker processes on CPU (the split is memory-mapped and preprocessing runs in the module, so
    workers would only take cores from the model), ``min(8, CPUs)`` where a GPU runs the cell."""
    if cfg.num_workers != "auto":
        return int(cfg.num_workers)
    return min(8, os.cpu_count() or 1) if runs_on_gpu(cfg) else 0


def runs_on_gpu(cfg: DictConfig) -> bool:
    accelerator = cfg.trainer.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(cfg: DictConfig) -> str:
    """``auto``: bf16 autocast where a GPU runs the cell, full fp32 on CPU."""
    if cfg.precision != "auto":
        return str(cfg.precision)
    return "bf16-mixed" if runs_on_gpu(cfg) else "32-true"


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


def _multi_process() -> bool:
    """A torchrun/SLURM launch: ranks decide from files in step, so rank 0 waits for locks instead of giving up."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _finished(cfg: DictConfig, out: Path) -> dict[str, Any] | None:
    result_file = out / "result.json"
    if result_file.exists() and not cfg.overwrite:
        log.info("%s: finished already (%s); overwrite=true recomputes it", cell_name(cfg), result_file)
        return json.loads(result_file.read_text())
    return None


def _lock_cell(cfg: DictConfig, out: Path) -> FileLock | None:
    """Rank 0 takes the cell's lock (other ranks follow rank 0), waiting ``lock_wait`` seconds (null: while its
    holder lives); a live holder past that means the cell is being computed elsewhere."""
    if _rank() != 0:
        return None
    wait = None if _multi_process() or cfg.get("lock_wait") is None else float(cfg.lock_wait)
    lock = FileLock(lock_path(out), timeout=wait)
    try:
        return lock.acquire()
    except LockTimeout:
        holder = _lock_holder(lock.path)
        raise LockBusyError(
            lock.path,
            holder,
            f"{cell_name(cfg)} is being computed by {holder} (lock {lock.path}); its result will appear in "
            f"{out}. Rerun later, or set lock_wait=SECONDS (null: as long as it runs) to wait for it.",
        ) from None


def _lock_holder(path: Path) -> str:
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return "another process"
    return f"process {held.get('pid')} on {held.get('host')}"


def run_cell(cfg: DictConfig, *, group: str | None = None) -> dict[str, Any] | None:
    """Run one cell; return its result dict on rank 0 (``None`` on other ranks)."""
    validate(cfg)
    out = cell_dir(cfg)
    if (done := _finished(cfg, out)) is not None:
        return done
    lock = _lock_cell(cfg, out)
    try:
        if lock is not None and not _multi_process() and (done := _finished(cfg, out)) is not None:
            return done  # another process finished it while this one waited
        if lock is not None and cfg.overwrite:
            (out / "result.json").unlink(missing_ok=True)  # an interrupted overwrite leaves no stale result
        try:
            result = compute_cell(cfg, group=group)
        except NonFiniteEmbeddingError as exc:
            precision = resolve_precision(cfg)
            if cfg.precision != "auto" or precision == "32-true":
                advice = (
                    f"run with precision=32-true (this run used {precision})"
                    if precision != "32-true"
                    else "they are not a precision overflow: check the model's weights and preprocessing"
                )
                raise NonFiniteEmbeddingError(f"{cell_name(cfg)}: {exc}; {advice}", exc.bad_rows) from exc
            log.warning("%s: %s under %s; recomputing in fp32 (precision=32-true)", cell_name(cfg), exc, precision)
            fp32 = copy.deepcopy(cfg)
            fp32.precision = "32-true"
            result = compute_cell(fp32, group=group, fallback={"from": precision, "bad_rows": exc.bad_rows})
        faults.hit("after_cell")
        return result
    finally:
        if lock is not None:
            lock.release()


def _lock_entries(targets: dict[str, Path]) -> dict[str, FileLock]:
    """Rank 0 locks every cache entry of the cell, in path order (no deadlock between cells sharing entries)."""
    if _rank() != 0:
        return {}
    locks = {}
    for role, path in sorted(targets.items(), key=lambda item: str(item[1])):
        locks[role] = FileLock(lock_path(path)).acquire()
    return locks


def _cached(path: Path, fields: dict[str, Any]) -> bool:
    """A sound cache entry; rank 0 removes a damaged one (with a warning), other ranks only look."""
    if _rank() == 0:
        return reusable(path, fields)
    return path.exists() and entry_problem(path, fields) is None


def compute_cell(
    cfg: DictConfig, *, group: str | None = None, fallback: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Extract what the cache lacks, evaluate and write the result (the caller holds the cell's lock)."""
    from cbmir.models import build_backbone

    out = cell_dir(cfg)
    t_start = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    side, volume = volume_side(cfg), volume_spec(cfg)
    opened = open_splits(cfg.dataset, cfg.size, cfg.paths.data_dir, ROLE_SPLIT.values(), volume_side=side)
    splits = {role: opened[split] for role, split in ROLE_SPLIT.items()}
    if cfg.k > len(splits["database"]):
        raise ConfigError(
            f"k={cfg.k} exceeds the {len(splits['database'])} database images of {cfg.dataset.name} at {cfg.size} px"
        )
    from cbmir.cell.text import TextEvaluator, text_kind  # hook: text protocols (joint-space image tower)
    from cbmir.models.text import joint_model_cfg

    text = text_kind(cfg)
    backbone = build_backbone(joint_model_cfg(cfg.model) if text else cfg.model)
    spec = backbone.preprocess.as_dict()
    cache_root = Path(cfg.paths.output_dir) / "cache"
    origin = {role: splits[role].provenance for role in ROLE_SPLIT}  # own data: source files, groups, content
    fields = {
        role: embedding_fields(cfg, backbone.identity, spec, role, origin[role] and origin[role].content_key)
        for role in ROLE_SPLIT
    }
    targets = {role: cache_path(cache_root, fields[role]) for role in ROLE_SPLIT}
    entry_locks = _lock_entries(targets)
    loggers: list = []
    try:
        todo = [role for role in ROLE_SPLIT if not (cfg.use_cache and _cached(targets[role], fields[role]))]
        for role in ROLE_SPLIT:
            if role not in todo:
                log.info("%s: %s embeddings from cache (%s)", cell_name(cfg), role, targets[role])
            elif role in entry_locks:
                targets[role].with_name(targets[role].name + ".tmp.npy").unlink(missing_ok=True)  # a crashed merge's

        record = {
            "protocol": protocol_id(cfg),
            "dataset": dataset_id(cfg),
            "size": cfg.size,
            "model": model_id(cfg),
            "unit_norm": backbone.unit_norm,
            "cached": {role: role not in todo for role in ROLE_SPLIT},
            "precision": resolve_precision(cfg),
            "versions": versions(),
            "config": redact(OmegaConf.to_container(cfg, resolve=True)),
        }
        if volume is not None:
            record["volume"] = fields["database"]["volume"]
        if fallback is not None:
            record["precision_fallback"] = fallback
        own = origin["database"] is not None
        if own:
            record["sources"] = {role: str(origin[role].metadata) for role in ROLE_SPLIT}
            record["sources"]["root"] = origin["database"].root
            record["skipped_files"] = list(origin["database"].skipped)
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
            images={role: splits[role].images for role in ROLE_SPLIT},
            gallery=bool(cfg.gallery),
            stats=StatsSettings.from_config(cfg.get("stats")),
            class_names=origin["database"].class_names if own else dataset_facts(cfg.dataset).class_names,
            groups={role: origin[role].groups for role in ROLE_SPLIT} if own else None,
            exclude_same_group=bool(cfg.protocol.get("exclude_same_group", False)),
            names={role: origin[role].sources for role in ROLE_SPLIT} if own else None,
            search_spec=search_spec(cfg),
        )
        loggers = make_loggers(cfg, out, name=cell_name(cfg), group=group) if _rank() == 0 else []
        evaluator = TextEvaluator(cell, loggers, cfg) if text else RetrievalEvaluator(cell, loggers)
        if todo:
            for role in todo:
                targets[role].parent.mkdir(parents=True, exist_ok=True)
            dim = volume.embedding_dim(backbone.dim, side) if volume else backbone.dim
            if _rank() == 0:  # shards and the merged file side by side, at the worst
                require_space(targets[todo[0]].parent, sum(2 * len(splits[r]) * dim * 4 for r in todo))
            writer = EmbeddingWriter(
                [targets[r] for r in todo], [len(splits[r]) for r in todo], dim, [fields[r] for r in todo]
            )
            trainer = build_trainer(cfg, [writer, evaluator], out)
            from cbmir.cell.extract import EmbeddingModule

            module = EmbeddingModule(
                backbone,
                min_source_size=None if volume else cfg.protocol.min_source_size,
                volume=volume,
                max_forward_batch=cfg.max_forward_batch,
                min_forward_batch=cfg.get("min_forward_batch", 1),
            )
            if cfg.compile:
                module.backbone = torch.compile(module.backbone)
            record["device"] = str(trainer.strategy.root_device)
            record["world_size"] = trainer.world_size
            trainer.predict(module, dataloaders=[make_loader(splits[r], cfg) for r in todo], return_predictions=False)
        else:
            evaluator.evaluate()
        return evaluator.result
    finally:
        close_loggers(loggers)
        for entry_lock in entry_locks.values():
            entry_lock.release()
        _barrier()
