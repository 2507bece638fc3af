"""The memory measurement's own process: peak RSS of a pipeline run over a large memory-mapped split.

    python -m cbmir.bench.memory_child PARAMS.json RESULT.json

A fresh process, so the peak is this run's and not the bench's; ``cbmir.bench.memory`` starts it.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cbmir.bench.common import Env, build, gb, subset, synthetic_split
from cbmir.bench.pipeline import pipeline_run
from cbmir.bench.sampler import MemorySampler, rollup
from cbmir.safety.files import atomic_write_json


def peak_rss_gb() -> float:
    """This process's peak resident set so far (Linux reports ``ru_maxrss`` in KiB)."""
    return gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


class StandIn(nn.Module):
    """A near-free backbone of the same width: lets the memory run read a whole large split in seconds."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """The real backbone over the first batches of a large memory-mapped split, then a stand-in backbone over
    all of it, with the peak memory of both phases.

    ``params``: ``env`` (``Env.params()``), ``threads``, ``tmp_dir``, ``model``, ``size``, ``images``, ``batch``,
    ``model_images``.
    """
    from cbmir.models.base import Backbone

    if params.get("threads"):
        torch.set_num_threads(params["threads"])
    work = Path(tempfile.mkdtemp(prefix="cbmir-bench-rss-", dir=params.get("tmp_dir")))
    try:
        env = Env.from_params(params["env"], work)
        size, n, batch = params["size"], params["images"], params["batch"]
        t0 = time.perf_counter()
        _folder, split = synthetic_split(work / "data", "pathmnist", size, (size, size, 3), n, seed=5)
        write_s = time.perf_counter() - t0
        base = rollup(os.getpid())
        backbone, cfg = build(env, params["model"])
        min_source = cfg.protocol.min_source_size
        sampler = MemorySampler()
        sampler.start()
        model_part = subset(split, params["model_images"])
        t_model, _, _ = pipeline_run(env, backbone, model_part, batch=batch, min_source=min_source)
        model_phase = sampler.phase()
        model_peak = peak_rss_gb()
        standin = Backbone(
            net=StandIn(backbone.dim).eval().requires_grad_(False),
            preprocess=backbone.preprocess,
            dim=backbone.dim,
            unit_norm=False,
        )
        t_all, _, _ = pipeline_run(env, standin, split, batch=batch, min_source=min_source)
        full_phase = sampler.phase()
        sampler.stop()
        return {
            "images": n,
            "shape": [n, size, size, 3],
            "split_gb": gb(split.images.nbytes),
            "model": params["model"],
            "batch_size": batch,
            "num_workers": env.workers,
            "model_images": params["model_images"],
            "seconds_write": write_s,
            "seconds_model_run": t_model,
            "seconds_full_split_standin": t_all,
            "baseline_rss_gb": gb(base.get("Rss", 0)),
            "peak_rss_after_model_run_gb": model_peak,
            "peak_rss_gb": peak_rss_gb(),
            "peak_rss_workers_gb": gb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024),
            "model_phase": model_phase,
            "full_split_phase": full_phase,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    params_path, result_path = argv if argv is not None else sys.argv[1:]
    atomic_write_json(Path(result_path), measure(json.loads(Path(params_path).read_text())))


if __name__ == "__main__":
    main()
