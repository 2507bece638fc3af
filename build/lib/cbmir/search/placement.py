"""Where a FAISS index lives: one GPU, replicated or sharded over several, or the CPU when it fits nowhere.

The decision is a pure function of the index's size and each device's free memory, so it
is tested with a fake device list; :func:`place_index` applies it and logs the choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Share of a device's free memory an index may take (search buffers and the queries need the rest).
DEFAULT_MEMORY_FRACTION = 0.8


@dataclass(frozen=True)
class Placement:
    """``kind``: ``cpu``, ``gpu`` (one device), ``replicated`` (a full copy per device) or ``sharded``."""

    kind: str
    devices: tuple[int, ...]
    reason: str


def plan_placement(
    index_bytes: int,
    free_bytes: Sequence[int],
    *,
    shard: bool = True,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
) -> Placement:
    """Choose where an index of ``index_bytes`` goes, given the free memory of each visible GPU.

    ``shard=True`` splits the database over all GPUs (each holds 1/n: the largest database fits);
    ``shard=False`` replicates it (each GPU answers a share of the queries: faster when it fits),
    falling back to sharding when one copy does not fit. Too large for even a shard: the CPU.
    """
    if not free_bytes:
        return Placement("cpu", (), "no GPU visible")
    budget = [int(f * memory_fraction) for f in free_bytes]
    devices = tuple(range(len(free_bytes)))
    gb = index_bytes / 1e9
    if len(devices) == 1:
        if index_bytes <= budget[0]:
            return Placement("gpu", devices, f"{gb:.2f} GB fits on GPU 0 ({budget[0] / 1e9:.2f} GB usable)")
        return Placement("cpu", (), f"{gb:.2f} GB exceeds GPU 0's {budget[0] / 1e9:.2f} GB usable: CPU index")
    per_shard = -(-index_bytes // len(devices))
    if not shard and index_bytes <= min(budget):
        return Placement("replicated", devices, f"{gb:.2f} GB replicated on {len(devices)} GPUs")
    if per_shard <= min(budget):
        why = "sharded" if shard else "one copy does not fit on every GPU: sharded"
        return Placement(
            "sharded", devices, f"{gb:.2f} GB {why} over {len(devices)} GPUs ({per_shard / 1e9:.2f} GB each)"
        )
    return Placement(
        "cpu", (), f"{gb:.2f} GB exceeds {len(devices)} GPUs even sharded ({min(budget) / 1e9:.2f} GB usable each): CPU"
    )


def gpu_free_bytes() -> list[int]:
    """Free memory of each GPU FAISS can use (empty without a GPU build of FAISS or without GPUs)."""
    try:
        import faiss
    except ImportError:
        return []
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return []
    import torch

    return [int(torch.cuda.mem_get_info(i)[0]) for i in range(faiss.get_num_gpus())]


def place_index(index, index_bytes: int, *, shard: bool = True, memory_fraction: float = DEFAULT_MEMORY_FRACTION):
    """``(index on its devices, Placement)``; an index type without a GPU implementation stays on the CPU."""
    import faiss

    plan = plan_placement(index_bytes, gpu_free_bytes(), shard=shard, memory_fraction=memory_fraction)
    if plan.kind == "cpu":
        log.info("index placement: %s", plan.reason)
        return index, plan
    try:
        if plan.kind == "gpu":
            placed = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), plan.devices[0], index)
        else:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = plan.kind == "sharded"
            placed = faiss.index_cpu_to_gpus_list(index, co=options, gpus=list(plan.devices))
    except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
        plan = Placement("cpu", (), f"{type(faiss.downcast_index(index)).__name__} cannot go to the GPU ({exc})")
        log.info("index placement: %s", plan.reason)
        return index, plan
    log.info("index placement: %s", plan.reason)
    return placed, plan
