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
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cbmir.bench.common import Env, build, gb, subset, synthetic_split
from cbmir.bench.pipeline import pipeline_run
from cbmir.safety.files import atomic_write_json


def rollup(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes: Rss and the proportional (shared pages split) Pss parts."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return kids


def peak_rss_gb() -> float:
    """This process's peak resident set so far (Linux reports ``ru_maxrss`` in KiB)."""
    return gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


class MemorySampler(threading.Thread):
    """Peaks, per phase, of this process's and its loader workers' memory (Linux ``smaps_rollup``).

    ``Pss`` splits shared pages between the processes that map them, so the sum over the main process
    and its workers is the run's real footprint; ``anon`` (+ shared memory) cannot be reclaimed, ``file``
    is memory-mapped data the kernel can drop at any time.
    """

    KEYS = ("main_rss", "main_anon", "main_file", "workers_rss", "total_pss", "total_pss_anon", "total_pss_file")

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = dict.fromkeys(self.KEYS, 0)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._phase = 0  # a sample read before phase() started a new phase is not counted in the new one

    def sample(self) -> None:
        started = self._phase
        pid = os.getpid()
        main = rollup(pid)
        kids = [rollup(c) for c in children(pid)]
        every = [main, *kids]
        now = {
            "main_rss": main.get("Rss", 0),
            "main_anon": main.get("Pss_Anon", 0) + main.get("Pss_Shmem", 0),
            "main_file": main.get("Pss_File", 0),
            "workers_rss": sum(k.get("Rss", 0) for k in kids),
            "total_pss": sum(p.get("Pss", 0) for p in every),
            "total_pss_anon": sum(p.get("Pss_Anon", 0) + p.get("Pss_Shmem", 0) for p in every),
            "total_pss_file": sum(p.get("Pss_File", 0) for p in every),
        }
        with self._lock:
            if started != self._phase:
                return
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def phase(self) -> dict[str, float]:
        """The peaks since the last call (GB), then start afresh."""
        self.sample()
        with self._lock:
            out = {f"peak_{k}_gb": gb(v) for k, v in self.peak.items()}
            self.peak = dict.fromkeys(self.KEYS, 0)
            self._phase += 1
        return out

    def stop(self) -> None:
        self._halt.set()
        self.join()


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
