"""Fixtures of the server tests: the hostile files, built once per session (a few seconds of zlib)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import attack_files
from tests.helpers.index_fixtures import build_tiny_index


@pytest.fixture(scope="session")
def attacks(tmp_path_factory) -> dict[str, Path]:
    """The uploads of issue 18: tiny files that claim (or inflate to) enormous images."""
    root = tmp_path_factory.mktemp("attacks")
    return {
        "rle_65535.dcm": attack_files.rle_dicom_claiming(root / "rle_65535.dcm"),
        "deflated_8192.dcm": attack_files.deflated_dicom_of_zeros(root / "deflated_8192.dcm"),
        "rgb_12000.png": attack_files.png_of_zeros(root / "rgb_12000.png", 12000, 12000, rgb=True),
        "bomb_30000.png": attack_files.png_of_zeros(root / "bomb_30000.png", 30000, 30000),
        "zeros_512.nii.gz": attack_files.nifti_of_zeros(root / "zeros_512.nii.gz"),
    }


@pytest.fixture(scope="session")
def tiny_index(data_dir, tmp_path_factory) -> Callable[..., Path]:
    """``tiny_index("dataset=bloodmnist", "size=64", …)``: the index of that setting, built once per session and
    shared (a test that changes an index works on a copy, or passes its own ``index.dir``)."""
    built: dict[tuple[str, ...], Path] = {}
    out = tmp_path_factory.mktemp("index-out")  # one output folder: the indexes of one cell share its embeddings

    def get(*extra: str) -> Path:
        if extra not in built:
            folder = build_tiny_index(data_dir, out, *extra)
            assert folder not in built.values(), f"{extra} would write into another setting's index: add index.dir"
            built[extra] = folder
        return built[extra]

    return get
