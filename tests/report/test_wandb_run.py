"""cbmir.report.wandb_run: the report as one offline W&B run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbmir.report.build import build_report
from cbmir.report.wandb_run import log_to_wandb


def test_wandb_offline_run(paper_cells, tmp_path):
    pytest.importorskip("wandb")
    report = build_report(paper_cells, tmp_path / "report", figures=False)
    fake_png = tmp_path / "report" / "paper" / "figures" / "x.png"
    fake_png.parent.mkdir(parents=True)
    import matplotlib.image as mpimg

    mpimg.imsave(fake_png, np.zeros((8, 8, 3)))
    report.files["paper"].append(fake_png)
    where = log_to_wandb(report, mode="offline", wandb_dir=tmp_path / "wb")
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and Path(where) == runs[0]
    assert list(runs[0].glob("*.wandb"))
