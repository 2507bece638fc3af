"""Where embeddings go: per-rank shards written batch by batch, merged by index, and a content-keyed cache.

A cache entry is the ``.npy`` plus its sidecar ``.json``; the sidecar is written last and records the
fields the entry was computed from and the file's size and checksum. An entry is reused only when all
of these match, so a half-written, truncated or damaged file is recomputed, never used.
"""

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
from cbmir.errors import NonFiniteEmbeddingError
from cbmir.logs import get_logger
from cbmir.safety import faults
from cbmir.safety.files import atomic_save_npy, atomic_write_json, require_space, writing  # noqa: F401  (re-exported)
from cbmir.safety.integrity import fingerprint, problem

log = get_logger(__name__)


class EmbeddingWriter(BasePredictionWriter):
    """Streams each rank's ``(index, embedding)`` batches to disk, then rank 0 merges them.

    Memory stays bounded (nothing is kept in RAM), and the merge asserts that every
    sample index arrives exactly once, so a multi-process run equals a single-process one.
    ``targets[i]`` is the final ``.npy`` of predict dataloader ``i`` with ``sizes[i]`` rows; its sidecar,
    written after the merge, records ``fields[i]`` and the file's fingerprint.
    """

    def __init__(self, targets: Sequence[Path], sizes: Sequence[int], dim: int, fields: Sequence[dict] | None = None):
        super().__init__(write_interval="batch")
        self.targets = [Path(t) for t in targets]
        self.sizes = list(sizes)
        self.dim = dim
        self.fields = list(fields) if fields is not None else [{} for _ in self.targets]
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
        # what this shard may still need, and the merged file beside it
        rows_written = emb.tell() // (4 * self.dim)
        with writing(Path(emb.name), (2 * self.sizes[dataloader_idx] - rows_written) * self.dim * 4):
            emb.write(np.ascontiguousarray(e).tobytes())
            idx.write(prediction["index"].detach().cpu().numpy().astype(np.int64).tobytes())
        faults.hit("after_batch")

    def on_predict_end(self, trainer, pl_module) -> None:
        for i, (emb, idx) in self._files.items():
            with writing(Path(emb.name), self.sizes[i] * self.dim * 4):  # buffered bytes may meet a full disk here
                emb.close()
                idx.close()
        self._files.clear()
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            for i in range(len(self.targets)):
                self.merge(i, trainer.world_size)
        trainer.strategy.barrier()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Close the shards of a failed run (they are truncated when the entry is computed again)."""
        for handle in (h for pair in self._files.values() for h in pair):
            try:
                handle.close()
            except OSError:
                pass
        self._files.clear()

    def merge(self, i: int, world_size: int) -> None:
        target, n = self.targets[i], self.sizes[i]
        tmp = target.with_name(target.name + ".tmp.npy")
        require_space(target.parent, n * self.dim * 4 + 4096)  # a memory map on a full disk dies of SIGBUS
        with writing(target, n * self.dim * 4, tmp):
            bad_rows = self._merge_into(tmp, i, world_size)
            if bad_rows:
                raise NonFiniteEmbeddingError(
                    f"{bad_rows} of {n} rows of the {self.fields[i].get('split', target.name)} embeddings "
                    "hold NaN or Inf",
                    bad_rows,
                )
            faults.hit("merge")
            os.replace(tmp, target)
        write_sidecar(target, self.fields[i])
        shutil.rmtree(target.with_suffix(".shards"), ignore_errors=True)

    def _merge_into(self, tmp: Path, i: int, world_size: int) -> int:
        """Write every rank's shard of dataloader ``i`` into ``tmp`` by sample index; return the non-finite rows."""
        target, n = self.targets[i], self.sizes[i]
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, self.dim))
        seen = np.zeros(n, dtype=np.int64)
        bad_rows = 0
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
                block = np.asarray(emb[start : start + 8192])
                bad_rows += int((~np.isfinite(block).all(axis=1)).sum())
                out[index[start : start + 8192]] = block
            del emb
        if not np.all(seen == 1):
            missing, dup = int((seen == 0).sum()), int((seen > 1).sum())
            raise RuntimeError(f"merge of {target.name}: {missing} samples missing, {dup} written more than once")
        out.flush()
        del out
        return bad_rows


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
    """Seal a cache entry: its fields, and the size and checksum of the ``.npy`` as it is now."""
    record = {**fields, "cbmir_version": __version__, "file": fingerprint(path)}
    atomic_write_json(path.with_suffix(".json"), record, sort_keys=True)


def entry_problem(path: Path, fields: dict[str, Any]) -> str | None:
    """Why the cache entry at ``path`` cannot be reused for ``fields`` (``None``: it can)."""
    sidecar = path.with_suffix(".json")
    if not path.exists():
        return "it is missing"
    try:
        record = json.loads(sidecar.read_text())
    except FileNotFoundError:
        return "its sidecar is missing (the run that wrote it was interrupted)"
    except ValueError as exc:
        return f"its sidecar {sidecar.name} is unreadable ({exc})"
    expected = json.loads(json.dumps({**fields, "cbmir_version": __version__}, default=str))
    if {k: v for k, v in record.items() if k != "file"} != expected:
        return f"its sidecar {sidecar.name} records other fields"
    return problem(path, record.get("file"))


def reusable(path: Path, fields: dict[str, Any]) -> bool:
    """True for a sound cache entry; a damaged one is removed with a warning, so it is recomputed."""
    if not path.exists():
        return False
    reason = entry_problem(path, fields)
    if reason is None:
        return True
    log.warning("cached embeddings %s are not reused: %s; recomputing them", path, reason)
    discard(path)
    return False


def discard(path: Path) -> None:
    """Remove a cache entry and whatever an interrupted computation of it left (sidecar, temp file, shards)."""
    for leftover in (path.with_suffix(".json"), path, path.with_name(path.name + ".tmp.npy")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(path.with_suffix(".shards"), ignore_errors=True)
