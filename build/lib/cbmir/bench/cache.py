"""Cache: a whole cell (``run_cell``) cold, then again with ``overwrite=true``: its embeddings come from the cache."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from cbmir.bench.common import Env, compose, median, model_overrides, quiet, spread, write_medmnist_npz
from cbmir.bench.profiles import Profile, Setting

log = logging.getLogger(__name__)


def bench_cache(env: Env, setting: Setting, profile: Profile, *, batch: int) -> dict[str, Any]:
    """``profile.cache_repeats`` cold + cached pairs after ``profile.warmup`` untimed ones, each in a fresh folder."""
    from cbmir.cell.run import run_cell

    n_db, n_q = profile.cache_images
    data_dir = env.work / "cache_data"
    write_medmnist_npz(
        data_dir / "pathmnist.npz",
        {"train": (n_db, 28, 28, 3), "val": (4, 28, 28, 3), "test": (n_q, 28, 28, 3)},
        seed=4,
    )
    log.info("  cache: run_cell on a %d + %d-image pathmnist-28 file, cold then cached", n_db, n_q)
    tc, tw = [], []
    for r in range(profile.warmup + profile.cache_repeats):
        overrides = model_overrides(setting.model, env.conf_dir, pretrained=env.pretrained, extra=env.overrides) + [
            "dataset=pathmnist",
            "size=28",
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={env.work / f'cache_out_{r}'}",
            "dataset.verify_md5=false",
            "dataset.download=false",
            "logger=none",
            f"trainer={env.accelerator}",
            f"batch_size={batch}",
            f"num_workers={env.workers}",
            f"precision={env.precision}",
            "overwrite=true",
        ]
        cfg = compose(env.conf_dir, overrides)
        with quiet(not env.verbose):
            t0 = perf_counter()
            cold = run_cell(cfg)
            t1 = perf_counter()
            warm = run_cell(cfg)
            t2 = perf_counter()
        if cold["cached"] != {"database": False, "query": False} or warm["cached"] != {"database": True, "query": True}:
            raise RuntimeError(
                f"cache bench: expected a cold then a cached cell, got {cold['cached']} / {warm['cached']}"
            )
        if r >= profile.warmup:
            tc.append(t1 - t0)
            tw.append(t2 - t1)
    speed = [c / w for c, w in zip(tc, tw)]
    return {
        "model": setting.model,
        "database": n_db,
        "queries": n_q,
        "seconds_cold": tc,
        "seconds_cached": tw,
        "cache_speedup": median(tc) / median(tw),
        "speedup_per_repeat": speed,
        "speedup_spread": spread(speed),
        "cached_s_breakdown": "build_backbone (for the cache key) + search + metrics + result files",
    }
