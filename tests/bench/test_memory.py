"""The memory measurement: the sampler sees this process's memory, and the child entry point measures a run."""

import json
import subprocess
import sys

import torch

from cbmir.bench.common import Env
from cbmir.bench.memory_child import main

TINY = ["model.arch=test_resnet.r160_in1k", "model.dim=96", "model.name=tiny_resnet"]


SAMPLER_RUN = """
import json
import numpy as np
from cbmir.bench.sampler import MemorySampler
sampler = MemorySampler(interval=0.01)
sampler.start()
block = np.ones(64 << 20, dtype=np.uint8)  # 64 MB of touched anonymous memory
first = sampler.phase()
del block
sampler.phase()  # may hold a sample taken before the block was freed
second = sampler.phase()
sampler.stop()
print(json.dumps([first, second]))
"""


def test_sampler_records_a_phase_peak_and_starts_afresh():
    """In a process of its own: a test worker's memory moves with whatever else it runs, the sampler's must not."""
    done = subprocess.run([sys.executable, "-c", SAMPLER_RUN], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["peak_main_rss_gb"] > 0.064 and first["peak_total_pss_anon_gb"] > 0.064
    assert first["peak_main_anon_gb"] - second["peak_main_anon_gb"] > 0.06  # the block, gone from the new phase


def test_memory_child_entry_point_writes_its_result(tmp_path):
    """What ``bench_memory`` runs in a fresh process (here in-process: the entry point is a plain function)."""
    env = Env(torch.device("cpu"), "32-true", 0, tmp_path, overrides=list(TINY))
    params = {"env": env.params(), "threads": 1, "tmp_dir": str(tmp_path), "model": "resnet50"}
    params |= {"size": 28, "images": 48, "batch": 16, "model_images": 16}
    (tmp_path / "params.json").write_text(json.dumps(params))
    main([str(tmp_path / "params.json"), str(tmp_path / "result.json")])
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["images"] == 48 and out["model_images"] == 16 and out["split_gb"] == 48 * 28 * 28 * 3 / 1e9
    assert out["peak_rss_gb"] >= out["peak_rss_after_model_run_gb"] > 0
    assert out["model_phase"]["peak_total_pss_gb"] > 0
