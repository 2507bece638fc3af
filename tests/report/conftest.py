"""Fixtures of the report's tests: a partial sweep on disk and its cells."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbmir.report.cells import Cell
from cbmir.report.collect import find_result_files, load_cells
from tests.helpers.result_files import write_result


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A partial paper sweep (2 models × 2 datasets × 2 sizes, one cell missing) and a small standard one."""
    out = tmp_path / "outputs"
    write_result(out, "paper", "breastmnist", 28, "vgg19", {"mAP@5": 83.18, "ACC@1": 79.48})
    write_result(out, "paper", "breastmnist", 64, "vgg19", {"mAP@5": 85.45, "ACC@1": 82.05})
    write_result(out, "paper", "breastmnist", 28, "uni", {"mAP@5": 84.00, "ACC@1": 70.00})
    write_result(out, "paper", "breastmnist", 64, "uni", {"mAP@5": 80.00, "ACC@1": 82.05})
    write_result(out, "paper", "bloodmnist", 28, "vgg19", {"mAP@5": 79.24, "ACC@1": 75.00})
    write_result(out, "paper", "bloodmnist", 28, "uni", {"mAP@5": 90.00, "ACC@1": 88.00})
    write_result(out, "paper", "bloodmnist", 64, "uni", {"mAP@5": 95.00, "ACC@1": 93.00})  # vgg19/blood/64 missing
    write_result(out, "standard", "breastmnist", 28, "uni", {"mAP@5": 11.11, "ACC@1": 22.22, "P@5": 33.33})
    write_result(out, "standard", "breastmnist", 28, "dinov2_s", {"mAP@5": 44.44, "ACC@1": 55.55, "P@5": 66.66})
    return out


@pytest.fixture
def sweep_cells(sweep) -> list[Cell]:
    """Every cell of :func:`sweep`, both protocols."""
    return load_cells(find_result_files([sweep]))


@pytest.fixture
def paper_cells(sweep_cells) -> list[Cell]:
    """The cells of :func:`sweep` under protocol ``paper``."""
    return [c for c in sweep_cells if c.protocol == "paper"]
