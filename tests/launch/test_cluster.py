"""Cluster sweeps through Hydra's submitit launcher: per-cell resources, a real local sweep (each cell its own
process, as on SLURM) equal to the basic launcher's, its summary and exit status, and the sbatch script SLURM
would get (a fake sbatch records it)."""

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.config import CONF_DIR, base_overrides, run_cli

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the `cluster` extra (hydra-submitit-launcher)")

from cbmir.launch.cluster import group_by_resources, job_resources  # noqa: E402


def results(out: Path) -> dict[tuple, dict]:
    found = {}
    for path in (out / "results").rglob("result.json"):
        r = json.loads(path.read_text())
        found[(r["protocol"], r["dataset"], r["size"], r["model"])] = (r, np.load(path.parent / "neighbors.npy"))
    return found


def hydra_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_resources_come_from_each_jobs_model():
    """What the plugin alone would do (resolve once, against the primary config) and what cbmir.launch.cluster does."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    per_job = []
    for model in ("resnet50", "dinov2_g", "uni", "densenet121"):
        cfg = hydra_config([f"model={model}", "hydra/launcher=slurm"])
        HydraConfig.instance().set_config(cfg)
        per_job.append(job_resources(cfg))
    assert [(r["mem_gb"], r["timeout_min"], r["gpus_per_node"]) for r in per_job] == [
        (32, 120, 1),
        (64, 480, 1),
        (48, 240, 1),
        (32, 120, 1),
    ]
    assert list(group_by_resources(per_job).values()) == [[0, 3], [1], [2]]
    # the sweep's primary config holds the default model: resolved once, every job would get ResNet-50's resources
    primary = hydra_config(["hydra/launcher=slurm"])
    HydraConfig.instance().set_config(primary)
    assert OmegaConf.to_container(primary.hydra.launcher, resolve=True)["mem_gb"] == 32


@pytest.mark.slow
def test_local_submitit_sweep_equals_the_basic_launcher(basic_sweep_2x2, data_dir, tmp_path):
    basic_out, basic = basic_sweep_2x2  # the basic launcher's 2x2 sweep (conftest.SWEEP_2X2), shared with test_run.py
    assert basic.returncode == 0, basic.stderr[-3000:]
    local_out = tmp_path / "local"
    # timeout per job from the job's own config: two sizes, two resource groups, so two job arrays
    local = run_cli(
        "-m",
        *base_overrides(data_dir, local_out),
        "dataset=bloodmnist",
        "size=28,64",
        "hydra/launcher=local",
        "hydra.launcher.timeout_min=${size}",
    )
    assert local.returncode == 0, local.stderr[-3000:]
    assert "sweep: 2 cells ok, 0 skipped, 0 failed" in local.stdout  # summed up in the launching process
    a, b = results(basic_out), results(local_out)
    assert set(b) == {("paper", "bloodmnist", size, "tiny_resnet") for size in (28, 64)} and set(b) <= set(a)
    for key in b:
        assert a[key][0]["metrics"] == b[key][0]["metrics"]
        np.testing.assert_array_equal(a[key][1], b[key][1])
    (sweep_dir,) = (local_out / "hydra" / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.name.isdigit())
    # sweep numbers kept across the two arrays: the second array's only job is the sweep's job 1, not 0
    assert [p.name for p in jobs] == ["0", "1"]
    for job, size in zip(jobs, (28, 64)):  # each cell: its outcome, its Hydra log
        outcome = json.loads((job / "cbmir_outcome.json").read_text())
        assert (outcome["status"], outcome["cell"]) == ("ok", f"paper/bloodmnist/{size}/tiny_resnet")
        assert (job / "run.log").exists()
    logs = list((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len({p.parent for p in logs}) == 2  # a process (and log) per cell
    launched = local.stdout + local.stderr
    assert (
        launched.count("job array of 1 cell(s)") == 2 and "timeout_min=28" in launched and "timeout_min=64" in launched
    )


@pytest.mark.slow
def test_local_submitit_sweep_reports_a_failed_cell_and_exits_nonzero(data_dir, tmp_path):
    out = tmp_path / "out"
    # dermamnist has no local file and downloads are off: that cell fails in its own process
    proc = run_cli("-m", *base_overrides(data_dir, out), "dataset=dermamnist,breastmnist", "hydra/launcher=local")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "sweep: 1 cells ok, 0 skipped, 1 failed" in proc.stdout
    assert "FAILED  paper/dermamnist/28/tiny_resnet" in proc.stdout


FAKE_SBATCH = """#!/bin/sh
# records the submission script and answers like SLURM (its PID as the job id: arrays are submitted concurrently)
cp "$1" "{capture}/submission_$$.sh"
echo "Submitted batch job $$"
"""
FAKE_SACCT = """#!/bin/sh
# every job asked about has failed (nothing ran), so the launcher returns at once
echo "JobID|State|NodeList"
for a in "$@"; do case "$a" in -j) ;; [0-9]*) echo "${a}_[0-99]|FAILED|node1" ;; esac; done
"""


def test_slurm_submission_script(data_dir, tmp_path):
    """What `hydra/launcher=slurm` submits: one array per resource request, resources, concurrency, command."""
    capture, bin_dir = tmp_path / "captured", tmp_path / "bin"
    capture.mkdir()
    bin_dir.mkdir()
    fakes = {"sbatch": FAKE_SBATCH.format(capture=capture), "sacct": FAKE_SACCT, "srun": "#!/bin/sh\nexit 1\n"}
    for name, text in fakes.items():  # srun: submitit only checks that it exists
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env_path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    proc = run_cli(
        "-m",
        *base_overrides(data_dir, tmp_path / "out", tiny=False),
        "model=resnet50,dinov2_g",
        "dataset=breastmnist,bloodmnist",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.array_parallelism=1",
        "hydra.launcher.setup=[module load cuda]",
        env={"PATH": env_path},
    )
    scripts = sorted(capture.glob("submission_*.sh"))
    assert len(scripts) == 2, proc.stderr[-3000:]  # ResNet-50's cells and DINOv2-g's: two arrays
    by_memory = {}
    for script in scripts:
        text = script.read_text()
        sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, flags=re.M))
        by_memory[sbatch["mem"]] = sbatch
        assert sbatch["array"] == "0-1%1"  # two cells each, one at a time
        assert sbatch["partition"] == "gpu" and sbatch["gpus-per-node"] == "1"
        assert sbatch["cpus-per-task"] == "8" and sbatch["ntasks-per-node"] == "1" and sbatch["nodes"] == "1"
        assert "/.submitit/%A_%a/%A_%a_0_log.out" in sbatch["output"]
        assert "module load cuda" in text
        assert re.search(r"srun .*-m submitit\.core\._submit .*\.submitit/%j", text)
    assert by_memory["32GB"]["time"] == "120" and by_memory["64GB"]["time"] == "480"
    assert proc.returncode != 0  # nothing ran: the fake sacct says the jobs failed
