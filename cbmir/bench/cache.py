"""Cache: a whole cell (``run_cell``) cold, then again with ``overwrite=true``: its embeddings come from the cache."""

from __future__ import annotations

import logging
import shutil
from time import perf_counter
from typing import Any

from cbmir.bench.common import Env, cell_overrides, compose, quiet, write_medmnist_npz
from cbmir.bench.profiles import Profile, Setting
from cbmir.bench.rounds import Ratio, figures, run_rounds

log = logging.getLogger(__name__)


def bench_cache(env: Env, setting: Setting, profile: Profile, *, batch: int) -> dict[str, Any]:
    """A cold cell (a fresh output folder each time) against a cached one (a warm folder), in paired rounds."""
    from cbmir.cell.run import run_cell

    n_db, n_q = profile.cache_images
    data_dir = env.work / "cache_data"
    write_medmnist_npz(
        data_dir / "pathmnist.npz",
        {"train": (n_db, 28, 28, 3), "val": (4, 28, 28, 3), "test": (n_q, 28, 28, 3)},
        seed=4,
    )
    log.info("  cache: run_cell on a %d + %d-image pathmnist-28 file, cold then cached", n_db, n_q)

    def cell_config(folder: str):
        overrides = cell_overrides(env, setting.model, data_dir, env.work / folder, batch)
        return compose(env.conf_dir, overrides)

    fresh = iter(range(10**9))

    def cell(cfg, cached: bool) -> float:
        with quiet(not env.verbose):
            t0 = perf_counter()
            out = run_cell(cfg)
            seconds = perf_counter() - t0
        if out["cached"] != {"database": cached, "query": cached}:
            raise RuntimeError(f"cache bench: expected a {'cached' if cached else 'cold'} cell, got {out['cached']}")
        return seconds

    warm = cell_config("cache_warm")
    cell(warm, cached=False)  # fills the warm folder's embedding cache
    for _ in range(profile.warmup):
        cell(warm, cached=True)
        cell(cell_config(f"cache_cold_{next(fresh)}"), cached=False)

    def cold() -> float:
        folder = f"cache_cold_{next(fresh)}"  # a fresh output folder: a cache miss
        seconds = cell(cell_config(folder), cached=False)
        shutil.rmtree(env.work / folder, ignore_errors=True)
        return seconds

    rounds = run_rounds(
        {
            "cold": cold,
            "cached": lambda: cell(warm, cached=True),
        },
        [Ratio("cache_speedup", "cached", "cold")],
        profile.budget(profile.section_budget_s),
    )
    return {
        "model": setting.model,
        "database": n_db,
        "queries": n_q,
        "unit": "cells",
        "cached_s_breakdown": "build_backbone (for the cache key) + search + metrics + result files",
        **figures(rounds, work={"cold": 1.0, "cached": 1.0}, targets={}, precision=profile.halfwidth),
    }
