"""Shared fixtures: tiny MedMNIST-format files, composed configs, and a tiny CNN for plumbing tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite never touches the network; these must hold before any hub or W&B import (the Makefile sets them too).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from tests.helpers.config import SWEEP_2X2, base_overrides, compose_config, run_cli  # noqa: E402
from tests.helpers.medmnist_fixtures import write_medmnist  # noqa: E402


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


@pytest.fixture(scope="session")
def basic_sweep_2x2(data_dir, tmp_path_factory):
    """``python -m cbmir.run -m`` over :data:`SWEEP_2X2`: (its output folder, the finished process)."""
    out = tmp_path_factory.mktemp("basic_sweep") / "out"
    return out, run_cli("-m", *base_overrides(data_dir, out), *SWEEP_2X2)


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


def pytest_collection_modifyitems(config, items):
    """Slow tests first (stable order otherwise): with two xdist workers the run then ends on short tests that
    balance the workers, not on one long test that leaves the other worker idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
