"""Where embeddings go: per-rank shards written batch by batch, merged by index, and a content-keyed cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from cbmir import __version__
from cbmir.files import atomic_save_npy, atomic_write_json  # noqa: F401  (re-exported for the writer's callers)


class EmbeddingWriter(BasePredictionWriter):
    """Streams each rank's ``(index, embedding)`` batches to disk, then rank 0 merges them.

    Memory stays bounded (nothing is kept in RAM), and the merge asserts that every
    sample index arrives exactly once, so a multi-process run equals a single-process one.
    ``targets[i]`` is the final ``.npy`` of predict dataloader ``i`` with ``sizes[i]`` rows.
    """

    def __init__(self, targets: Sequence[Path], sizes: Sequence[int], dim: int):
        super().__init__(write_interval="batch")
        self.targets = [Path(t) for t in targets]
        self.sizes = list(sizes)
        self.dim = dim
        self._files: dict[int, tuple[Any, Any]] = {}

    def _shard(self, i: int, rank: int) -> tuple[Path, Path]:
        d = self.targets[i].with_suffix(".shards")
        return d / f"rank{rank}.f32", d / f"rank{rank}.i64"

    def on_predict_start(self, trainer, pl_module) -> None:
        for i in range(len(self.targets)):
            emb, idx = self._shard(i, trainer.global_rank)
            emb.parent.mkdir(parents=True, exist_ok=True)
            self._files[i] = (open(emb, "wb"), open(idx, "wb"))  # truncates leftovers of a crashed run

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        emb, idx = self._files[dataloader_idx]
        e = prediction["embedding"].detach().to("cpu", non_blocking=False).numpy().astype(np.float32, copy=False)
        if e.shape[1] != self.dim:
            raise RuntimeError(f"embedding width {e.shape[1]} != expected {self.dim}")
        emb.write(np.ascontiguousarray(e).tobytes())
        idx.write(prediction["index"].detach().cpu().numpy().astype(np.int64).tobytes())

    def on_predict_end(self, trainer, pl_module) -> None:
        for emb, idx in self._files.values():
            emb.close()
            idx.close()
        self._files.clear()
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            for i in range(len(self.targets)):
                self.merge(i, trainer.world_size)
        trainer.strategy.barrier()

    def merge(self, i: int, world_size: int) -> None:
        target, n = self.targets[i], self.sizes[i]
        tmp = target.with_name(target.name + ".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, self.dim))
        seen = np.zeros(n, dtype=np.int64)
        for rank in range(world_size):
            emb_path, idx_path = self._shard(i, rank)
            index = np.fromfile(idx_path, dtype=np.int64)
            if index.size == 0:
                continue
            emb = np.memmap(emb_path, dtype=np.float32, mode="r", shape=(index.size, self.dim))
            if index.min() < 0 or index.max() >= n:
                raise RuntimeError(f"rank {rank} wrote sample indices outside [0, {n})")
            np.add.at(seen, index, 1)
            for start in range(0, index.size, 8192):  # bounded memory for large shards
                out[index[start : start + 8192]] = emb[start : start + 8192]
            del emb
        if not np.all(seen == 1):
            missing, dup = int((seen == 0).sum()), int((seen > 1).sum())
            raise RuntimeError(f"merge of {target.name}: {missing} samples missing, {dup} written more than once")
        out.flush()
        del out
        os.replace(tmp, target)
        shutil.rmtree(target.with_suffix(".shards"), ignore_errors=True)


def cache_key(fields: dict[str, Any]) -> str:
    blob = json.dumps({**fields, "cbmir_version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(root: Path, fields: dict[str, Any]) -> Path:
    """``<root>/embeddings/<model>/<dataset>_<size>_<split>_<hash>.npy``, the hash over every field.

    A sidecar ``.json`` records the fields, so a cached file says what it holds.
    """
    key = cache_key(fields)
    path = (
        root / "embeddings" / str(fields["model"]) / f"{fields['dataset']}_{fields['size']}_{fields['split']}_{key}.npy"
    )
    return path


def write_sidecar(path: Path, fields: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**fields, "cbmir_version": __version__}, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path.with_suffix(".json"))
