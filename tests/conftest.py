"""Shared fixtures: tiny MedMNIST-format files, composed configs, and a tiny CNN for plumbing tests."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The suite never touches the network; these must hold before any hub or W&B import (the Makefile sets them too).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

sys.path.insert(0, str(Path(__file__).parent))
from medmnist_fixtures import write_medmnist  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
#: Reference embeddings and checkpoint layouts of the upstream implementations (scripts/make_golden.py).
GOLDEN = ROOT / "tests" / "golden"
#: timm's 0.4 M-parameter test ResNet (96-d): real CNN code paths at a fraction of the cost.
TINY_CNN = ["model.arch=test_resnet.r160_in1k", "model.dim=96", "model.name=tiny_resnet"]


def compose_config(overrides: list[str], *, hydra: bool = False, config_name: str = "config"):
    """The real config tree composed with ``overrides``, as the command line would (``hydra``: with ``cfg.hydra``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra)


@functools.cache
def _model_node(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config([f"model={name}"]).model, resolve=True)  # type: ignore[return-value]


def model_cfg(name: str, /, **over: Any):
    """``conf/model/<name>.yaml`` as ``model=<name>`` composes it (bases included), with ``over`` merged in."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.create(_model_node(name)), over)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Small files under real MedMNIST flags: gray 2-class, RGB 4-class, multi-label and 3D."""
    root = tmp_path_factory.mktemp("medmnist")
    write_medmnist(root, "breastmnist", 28, n_classes=2, seed=1)
    write_medmnist(root, "breastmnist", 64, n_classes=2, seed=2)
    write_medmnist(root, "bloodmnist", 28, n_classes=4, rgb=True, seed=3)
    write_medmnist(root, "bloodmnist", 64, n_classes=4, rgb=True, seed=4)
    write_medmnist(root, "bloodmnist", 128, n_classes=4, rgb=True, seed=6)
    write_medmnist(root, "chestmnist", 28, n_classes=4, multilabel=14, seed=5)
    small = {"train": 12, "val": 2, "test": 6}
    write_medmnist(root, "adrenalmnist3d", 28, n_classes=2, depth=28, n=small, seed=7)
    write_medmnist(root, "adrenalmnist3d", 64, n_classes=2, depth=64, n=small, seed=8)
    return root


#: The 2x2 sweep through Hydra's basic launcher that several slow tests read (run once per session).
SWEEP_2X2 = ["dataset=breastmnist,bloodmnist", "size=28,64"]


@pytest.fixture(scope="session")
def basic_sweep_2x2(data_dir, tmp_path_factory):
    """``python -m cbmir.run -m`` over :data:`SWEEP_2X2`: (its output folder, the finished process)."""
    out = tmp_path_factory.mktemp("basic_sweep") / "out"
    return out, run_cli("-m", *base_overrides(data_dir, out), *SWEEP_2X2)


def base_overrides(data_dir: Path, out_dir: Path, *, tiny: bool = True) -> list[str]:
    return [
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out_dir}",
        "dataset.verify_md5=false",
        "dataset.download=false",
        "model.pretrained=false",
        "num_workers=0",
        "batch_size=8",
        "logger=csv",
        *(TINY_CNN if tiny else []),
    ]


@pytest.fixture
def compose():
    """Compose the real config tree with overrides, as the command line would."""
    return compose_config


@pytest.fixture
def cell_cfg(compose, data_dir, tmp_path):
    """A config for one tiny cell in this test's own output folder."""

    def _cfg(*extra: str, tiny: bool = True):
        return compose(base_overrides(data_dir, tmp_path / "out", tiny=tiny) + list(extra))

    return _cfg


def run_cli(
    *args: str,
    cwd: Path | None = None,
    launcher: list[str] | None = None,
    timeout: int = 300,
    env: dict[str, str] | None = None,
):
    """``python -m cbmir.run ARGS`` (or under ``launcher``, e.g. torchrun) in a fresh, offline process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = (launcher or [sys.executable]) + ["-m", "cbmir.run", *args]
    return subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)
