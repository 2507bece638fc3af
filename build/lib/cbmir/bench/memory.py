"""Memory: peak RSS of a pipeline run over a large memory-mapped split, measured in a fresh process
(``cbmir.bench.memory_child``), so the figure is that run's alone."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from typing import Any

import torch

from cbmir.bench.common import Env, gb
from cbmir.bench.profiles import PATHMNIST, Profile, Setting

log = logging.getLogger(__name__)


def bench_memory(
    env: Env, setting: Setting, profile: Profile, *, batch: int, tmp_dir: str | None = None, timeout: int = 1800
) -> dict[str, Any]:
    size, n = profile.rss_size, profile.rss_images
    log.info(
        "  memory: a fresh process maps %d x %dx%dx3 (%.1f GB), runs %s over %d batches of %d, "
        "then a stand-in backbone over all %d batches",
        n,
        size,
        size,
        gb(n * size * size * 3),
        setting.model,
        profile.rss_model_batches,
        batch,
        math.ceil(n / batch),
    )
    params = {
        "env": env.params(),
        "threads": torch.get_num_threads(),
        "tmp_dir": tmp_dir,
        "model": setting.model,
        "size": size,
        "images": n,
        "batch": batch,
        "model_images": min(n, profile.rss_model_batches * batch),
    }
    params_path, result_path = env.work / "memory_params.json", env.work / "memory_result.json"
    params_path.write_text(json.dumps(params))
    proc = subprocess.run(
        [sys.executable, "-m", "cbmir.bench.memory_child", str(params_path), str(result_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")},
        timeout=timeout,
    )
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"memory run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(result_path.read_text())
    # A PathMNIST cell's search phase: the database embeddings read into memory once by search_faiss
    # (ascontiguousarray of the memory map) and once more inside the FAISS index, plus the queries.
    emb = 4 * PATHMNIST["dim"]
    out["pathmnist_search_phase_estimate_gb"] = gb(2 * PATHMNIST["database"] * emb + PATHMNIST["query"] * emb)
    return out
