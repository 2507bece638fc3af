"""3D: a volume's slices batched through the pipeline (``VolumeSpec``) vs one slice per forward pass (the study's)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from cbmir.bench.common import Env, autocast, build, sync, write_medmnist_npz
from cbmir.bench.pipeline import pipeline_run
from cbmir.bench.profiles import TARGETS, Profile, Setting
from cbmir.bench.rounds import Ratio, figures, run_rounds

log = logging.getLogger(__name__)


def bench_3d(
    env: Env, setting: Setting, profile: Profile, *, volume_batch: int, max_forward_batch: int
) -> dict[str, Any]:
    """Batched slices vs one slice per forward, on the same resampled volumes (``volume_batch`` volumes a batch)."""
    from cbmir.cell.extract import EmbeddingModule, VolumeSpec
    from cbmir.data import Split, load_split, resized_volumes, split_arrays

    backbone, cfg = build(env, setting.model)
    depth = 28
    side = max(depth, cfg.protocol.min_source_size or 0)  # the cell's volume_side: 28 -> 32
    n_vol = profile.volumes
    npz = write_medmnist_npz(
        env.work / "vol" / "organmnist3d.npz",
        {"train": (n_vol, depth, depth, depth), "val": (1, depth, depth, depth), "test": (1, depth, depth, depth)},
        seed=2,
    )
    folder = split_arrays(npz)
    loaded = load_split(folder, "organmnist3d", depth, "train")
    split = Split("organmnist3d", depth, "train", resized_volumes(folder, "train", loaded.images, side), loaded.labels)
    volume = VolumeSpec()
    dim = volume.embedding_dim(backbone.dim, side)
    vol_batch = max(1, min(n_vol, volume_batch))
    m_vol = max(1, min(n_vol, profile.slice_volumes))
    log.info(
        "  3D: %d volumes of %d^3 (%d slices), %d volumes per batch, at most %d slices per forward; "
        "one slice per forward timed on %d volumes and scaled to %d",
        n_vol,
        side,
        n_vol * side,
        vol_batch,
        max_forward_batch,
        m_vol,
        n_vol,
    )
    module = EmbeddingModule(backbone, min_source_size=None).to(env.device).eval()

    def per_slice(count: int) -> tuple[float, np.ndarray]:
        """The study's way: every slice of every volume through its own forward pass."""
        out = []
        sync(env.device)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(env.device, env.precision):
            for v in range(count):
                vol = torch.from_numpy(np.array(split.images[v])).to(env.device)
                out.append(
                    torch.cat([module.embed_images(vol[s : s + 1]) for s in range(vol.shape[0])]).reshape(-1).cpu()
                )
        sync(env.device)
        return time.perf_counter() - t0, torch.stack(out).numpy()

    def batched(keep: bool = False):
        return pipeline_run(
            env,
            backbone,
            split,
            batch=vol_batch,
            min_source=None,
            volume=volume,
            max_forward_batch=max_forward_batch,
            dim=dim,
            keep=keep,
        )

    diff = None
    for w in range(max(1, profile.warmup)):
        _t, _steady, emb_b = batched(keep=w == 0)
        module.to(env.device)  # Lightning's teardown moved the shared backbone back to the CPU
        _t, emb_s = per_slice(m_vol)
        if w == 0:
            diff = float(np.abs(emb_b[:m_vol] - emb_s).max() / max(np.abs(emb_s).max(), 1e-12))

    def looped() -> float:
        module.to(env.device)
        return per_slice(m_vol)[0] * n_vol / m_vol  # exactly linear: one forward per slice

    rounds = run_rounds(
        {"batched": lambda: batched()[0], "one_slice_per_forward": looped},
        [Ratio("speedup_3d_batched", "batched", "one_slice_per_forward")],
        profile.budget(profile.section_budget_s),
    )
    out = figures(
        rounds, work=dict.fromkeys(rounds["seconds"], n_vol * side), targets=TARGETS, precision=profile.halfwidth
    )
    return {
        "model": setting.model,
        "volumes": n_vol,
        "side": side,
        "slices": n_vol * side,
        "unit": "slices",
        "volumes_per_batch": vol_batch,
        "max_forward_batch": max_forward_batch,
        "per_slice_volumes_timed": m_vol,
        "max_rel_diff_batched_vs_per_slice": diff,
        **out,
    }
