"""The package as a researcher installs it: a wheel (not editable) used from a folder outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.config import ROOT, base_overrides


def _tracked_files(dest: Path) -> None:
    listed = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # what a commit of the tree holds
    files = subprocess.run(listed, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if not (ROOT / name).is_file():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The wheel built from a copy of the tracked files, installed (no deps) into a scratch folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source, wheels, target = tmp / "source", tmp / "wheels", tmp / "site"
    _tracked_files(source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("cbmir-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return {"bin": str(target / "bin" / "cbmir"), "site": str(target), "env": env, "cwd": str(tmp)}


def _run(installed, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [installed["bin"], *args],
        cwd=installed["cwd"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_answers_help(installed):
    site = Path(installed["site"])
    assert (site / "cbmir" / "conf" / "config.yaml").is_file()
    assert (site / "cbmir" / "conf" / "model" / "resnet50.yaml").is_file()
    assert (site / "hydra_plugins" / "cbmir_cluster" / "__init__.py").is_file()
    assert (site / "cbmir" / "resources" / "paper_results.csv").is_file()
    done = _run(installed, "--help")
    assert done.returncode == 0 and "commands:" in done.stdout
    where = _run(installed, "run", "--cfg", "job", "--package", "model")
    assert where.returncode == 0, where.stderr
    assert "family: timm_cnn" in where.stdout


@pytest.mark.slow
def test_the_installed_package_runs_a_cell_outside_the_checkout(installed, data_dir, tmp_path):
    out = tmp_path / "out"
    done = _run(installed, "run", *base_overrides(data_dir, out))
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = out.glob("results/paper/breastmnist/28/tiny_resnet/result.json")
    code = "import cbmir, sys; print(cbmir.__file__)"
    imported = subprocess.run(
        [sys.executable, "-c", code],
        env=installed["env"],
        cwd=installed["cwd"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip().startswith(installed["site"])  # the wheel's copy, not the checkout
    assert _run(installed, "run", "model=nope").returncode == 2
