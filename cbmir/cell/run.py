"""One cell = (protocol, dataset, size, model): from its spec, extract (or reuse), evaluate, write the result.

A cell is idempotent: its result lives at a deterministic path, and a finished cell
is skipped unless ``overwrite=true``, so a broken sweep resumes where it stopped.
One process computes a cell at a time (a lock file in its folder, another per cache entry);
a cache entry is reused only when its recorded size and checksum match.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from cbmir.cell.callback import RetrievalEvaluator
from cbmir.cell.evaluate import CellResult, Evaluation
from cbmir.cell.loggers import close_loggers, make_loggers
from cbmir.cell.spec import CellSpec, TrainerSpec, build_spec
from cbmir.cell.store import EmbeddingWriter, cache_path, entry_problem, reusable
from cbmir.data import ROLE_SPLIT, ImageArrayDataset, collate_batched, dataset_facts, open_splits
from cbmir.errors import ConfigError, LockBusyError, NonFiniteEmbeddingError
from cbmir.layout import versions
from cbmir.logs import get_logger
from cbmir.safety import faults
from cbmir.safety.files import require_space
from cbmir.safety.locks import FileLock, LockTimeout, lock_path
from cbmir.safety.secrets import redact

log = get_logger(__name__)


def embedding_fields(
    spec: CellSpec, identity: dict[str, Any], preprocess: dict[str, Any], role: str, content: str | None = None
) -> dict[str, Any]:
    """Everything the embeddings of one split depend on: the content key of the cache.

    ``content`` is own data's ingested content key (every file's bytes, label, split and decoding setting).
    """
    fields = {
        "model": spec.model_id,
        "backbone": identity,
        "preprocess": preprocess,
        "min_source_size": spec.protocol.min_source_size,
        "precision": resolve_precision(spec.precision, spec.trainer),
        "dataset": spec.dataset.name,
        "flag": spec.dataset.get("flag"),
        "size": spec.size,
        "split": ROLE_SPLIT[role],
    }
    if spec.volume is not None:
        # the resampling method is versioned: change it and every 3D cache entry changes
        fields["volume"] = {
            "aggregate": spec.volume.aggregate,
            "planes": spec.volume.planes,
            "side": spec.volume_side,
            "resample": "spline3-axis0+bicubic2d, clipped, v1",
        }
    if identity.get("weights") == "random":
        fields["seed"] = spec.seed
    if content is not None:
        fields["content"] = content
    return fields


def make_loader(split, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        ImageArrayDataset(split),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_batched,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def resolve_num_workers(num_workers: int | str, trainer: TrainerSpec) -> int:
    """``auto``: no worker processes on CPU (the split is memory-mapped and preprocessing runs in the module, so
    workers would only take cores from the model), ``min(8, CPUs)`` where a GPU runs the cell."""
    if num_workers != "auto":
        return int(num_workers)
    return min(8, os.cpu_count() or 1) if runs_on_gpu(trainer) else 0


def runs_on_gpu(trainer: TrainerSpec) -> bool:
    accelerator = trainer.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, trainer: TrainerSpec) -> str:
    """``auto``: bf16 autocast where a GPU runs the cell, full fp32 on CPU."""
    if precision != "auto":
        return str(precision)
    return "bf16-mixed" if runs_on_gpu(trainer) else "32-true"


def build_trainer(trainer: TrainerSpec, precision: str, callbacks: list, out_dir: Path) -> L.Trainer:
    t = trainer
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=resolve_precision(precision, trainer),
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


def _finished(spec: CellSpec) -> dict[str, Any] | None:
    result_file = spec.out_dir / "result.json"
    if result_file.exists() and not spec.overwrite:
        log.info("%s: finished already (%s); overwrite=true recomputes it", spec.name, result_file)
        return json.loads(result_file.read_text())
    return None


def _lock_cell(spec: CellSpec) -> FileLock | None:
    """Rank 0 takes the cell's lock (other ranks follow rank 0), waiting ``lock_wait`` seconds (null: while its
    holder lives); a live holder past that means the cell is being computed elsewhere."""
    if _rank() != 0:
        return None
    wait = None if _multi_process() else spec.lock_wait
    lock = FileLock(lock_path(spec.out_dir), timeout=wait)
    try:
        return lock.acquire()
    except LockTimeout:
        holder = _lock_holder(lock.path)
        raise LockBusyError(
            lock.path,
            holder,
            f"{spec.name} is being computed by {holder} (lock {lock.path}); its result will appear in "
            f"{spec.out_dir}. Rerun later, or set lock_wait=SECONDS (null: as long as it runs) to wait for it.",
        ) from None


def _lock_holder(path: Path) -> str:
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return "another process"
    return f"process {held.get('pid')} on {held.get('host')}"


def run_cell(cell: CellSpec | DictConfig, *, group: str | None = None) -> dict[str, Any] | None:
    """Run one cell (a spec, or a composed config validated here); its result dict on rank 0, ``None`` elsewhere."""
    spec = cell if isinstance(cell, CellSpec) else build_spec(cell)
    if (done := _finished(spec)) is not None:
        return done
    lock = _lock_cell(spec)
    try:
        if lock is not None and not _multi_process() and (done := _finished(spec)) is not None:
            return done  # another process finished it while this one waited
        if lock is not None and spec.overwrite:
            (spec.out_dir / "result.json").unlink(missing_ok=True)  # an interrupted overwrite leaves no stale result
        try:
            result = compute_cell(spec, group=group)
        except NonFiniteEmbeddingError as exc:
            precision = resolve_precision(spec.precision, spec.trainer)
            if spec.precision != "auto" or precision == "32-true":
                advice = (
                    f"run with precision=32-true (this run used {precision})"
                    if precision != "32-true"
                    else "they are not a precision overflow: check the model's weights and preprocessing"
                )
                raise NonFiniteEmbeddingError(f"{spec.name}: {exc}; {advice}", exc.bad_rows) from exc
            log.warning("%s: %s under %s; recomputing in fp32 (precision=32-true)", spec.name, exc, precision)
            fp32 = replace(spec, precision="32-true")
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
    cell: CellSpec, *, group: str | None = None, fallback: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Extract what the cache lacks, evaluate and write the result (the caller holds the cell's lock)."""
    from cbmir.models import build_backbone

    out = cell.out_dir
    t_start = time.perf_counter()
    L.seed_everything(cell.seed, verbose=False)
    side, volume = cell.volume_side, cell.volume
    opened = open_splits(
        cell.dataset, cell.size, cell.data_dir, ROLE_SPLIT.values(), volume_side=side, limits=cell.decode
    )
    splits = {role: opened[split] for role, split in ROLE_SPLIT.items()}
    if cell.k > len(splits["database"]):
        raise ConfigError(
            f"k={cell.k} exceeds the {len(splits['database'])} database images of {cell.dataset.name} at {cell.size} px"
        )
    from cbmir.cell.text import TextEvaluation, text_kind  # text protocols: the joint-space image tower
    from cbmir.models.text import joint_model_cfg

    text = text_kind(cell)
    backbone = build_backbone(joint_model_cfg(cell.model) if text else cell.model)
    spec = backbone.preprocess.as_dict()
    cache_root = cell.cache_dir
    origin = {role: splits[role].provenance for role in ROLE_SPLIT}  # own data: source files, groups, content
    fields = {
        role: embedding_fields(cell, backbone.identity, spec, role, origin[role] and origin[role].content_key)
        for role in ROLE_SPLIT
    }
    targets = {role: cache_path(cache_root, fields[role]) for role in ROLE_SPLIT}
    entry_locks = _lock_entries(targets)
    loggers: list = []
    try:
        todo = [role for role in ROLE_SPLIT if not (cell.use_cache and _cached(targets[role], fields[role]))]
        for role in ROLE_SPLIT:
            if role not in todo:
                log.info("%s: %s embeddings from cache (%s)", cell.name, role, targets[role])
            elif role in entry_locks:
                targets[role].with_name(targets[role].name + ".tmp.npy").unlink(missing_ok=True)  # a crashed merge's

        record = {
            "protocol": cell.protocol.id,
            "dataset": cell.dataset_id,
            "size": cell.size,
            "model": cell.model_id,
            "unit_norm": backbone.unit_norm,
            "cached": {role: role not in todo for role in ROLE_SPLIT},
            "precision": resolve_precision(cell.precision, cell.trainer),
            "versions": versions(),
            "config": redact(cell.config),
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
        result = CellResult(
            out_dir=out,
            embeddings=targets,
            labels={role: splits[role].labels for role in ROLE_SPLIT},
            k=cell.k,
            metric=cell.protocol.metric,
            ties=cell.protocol.vote_ties,
            standard_metrics=cell.protocol.standard_metrics,
            record=record,
            started=t_start,
            images={role: splits[role].images for role in ROLE_SPLIT},
            gallery=cell.gallery,
            stats=cell.stats,
            class_names=origin["database"].class_names if own else dataset_facts(cell.dataset).class_names,
            groups={role: origin[role].groups for role in ROLE_SPLIT} if own else None,
            exclude_same_group=cell.protocol.exclude_same_group,
            names={role: origin[role].sources for role in ROLE_SPLIT} if own else None,
            search_spec=cell.search,
        )
        loggers = make_loggers(cell, group=group) if _rank() == 0 else []
        evaluation = TextEvaluation(result, loggers, cell) if text else Evaluation(result, loggers)
        evaluator = RetrievalEvaluator(evaluation)
        if todo:
            for role in todo:
                targets[role].parent.mkdir(parents=True, exist_ok=True)
            dim = volume.embedding_dim(backbone.dim, side) if volume else backbone.dim
            if _rank() == 0:  # shards and the merged file side by side, at the worst
                require_space(targets[todo[0]].parent, sum(2 * len(splits[r]) * dim * 4 for r in todo))
            writer = EmbeddingWriter(
                [targets[r] for r in todo], [len(splits[r]) for r in todo], dim, [fields[r] for r in todo]
            )
            trainer = build_trainer(cell.trainer, cell.precision, [writer, evaluator], out)
            from cbmir.cell.extract import EmbeddingModule

            module = EmbeddingModule(
                backbone,
                min_source_size=None if volume else cell.protocol.min_source_size,
                volume=volume,
                max_forward_batch=cell.max_forward_batch,
                min_forward_batch=cell.min_forward_batch,
            )
            if cell.compile:
                module.backbone = torch.compile(module.backbone)
            workers = resolve_num_workers(cell.num_workers, cell.trainer)
            record["device"] = str(trainer.strategy.root_device)
            record["world_size"] = trainer.world_size
            loaders = [make_loader(splits[r], cell.batch_size, workers) for r in todo]
            trainer.predict(module, dataloaders=loaders, return_predictions=False)
        else:
            evaluator.evaluate()
        return evaluator.result
    finally:
        close_loggers(loggers)
        for entry_lock in entry_locks.values():
            entry_lock.release()
        _barrier()
