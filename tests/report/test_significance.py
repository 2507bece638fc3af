"""Intervals, significance marks, pairwise tables, per-class tables and statistics figures of the report.

A synthetic column (BreastMNIST, 28 px) of 200 queries: VGG19 hits 90 %, ResNet50 the same queries but
one (89.5 %: indistinguishable from the best), DenseNet121 and CONCH identical at 50 % (clearly worse
than the best, indistinguishable from each other). BloodMNIST/28 holds old results: one rescored from
neighbors.npy and the MedMNIST labels, one with result.json intervals only, one with nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbmir.metrics.per_query import write_per_query
from cbmir.metrics.retrieval import per_query_scores
from cbmir.report.build import build_report
from cbmir.report.collect import find_result_files, load_cells
from cbmir.report.naming import metric_order
from cbmir.report.tables import metric_table
from cbmir.stats.bootstrap import StatsSettings
from cbmir.stats.paired import metric_intervals
from tests.helpers.result_files import read_csv, write_result

Q = 200
SETTINGS = StatsSettings(resamples=1000, seed=0)
LABELS = np.arange(Q) % 2


def _hits(n_hits: int, flip: int | None = None) -> np.ndarray:
    hits = (np.arange(Q) < n_hits).astype(float)
    if flip is not None:
        hits[flip] = 1 - hits[flip]
    return hits


#: per-query ACC@1 (mAP@5 = the same hits, scaled) of the BreastMNIST/28 column
COLUMN = {"vgg19": _hits(180), "resnet50": _hits(180, flip=0), "densenet121": _hits(100), "conch": _hits(100)}


def _write_with_scores(root: Path, model: str, hits: np.ndarray, **extra) -> Path:
    scores = {"mAP@5": 0.8 * hits, "ACC@1": hits}
    metrics = {name: float(100 * v.mean()) for name, v in scores.items()}
    folder = write_result(root, "paper", "breastmnist", 28, model, metrics, **extra)
    write_per_query(folder, scores, LABELS)
    return folder


@pytest.fixture
def stats_sweep(tmp_path) -> Path:
    out = tmp_path / "outputs"
    for model, hits in COLUMN.items():
        _write_with_scores(out, model, hits)
    # old results: BloodMNIST/28 without per_query.npz
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    db_labels, q_labels = rng.integers(0, 3, size=(40, 1)), rng.integers(0, 3, size=(10, 1))
    np.savez(data_dir / "bloodmnist.npz", train_labels=db_labels, test_labels=q_labels)  # the labels suffice
    neighbors = np.stack([np.flatnonzero(db_labels[:, 0] == q_labels[i, 0])[:5] for i in range(10)])
    for i in range(3):  # three queries miss at rank 1: ACC@1 = 70 %
        neighbors[i, 0] = np.flatnonzero(db_labels[:, 0] != q_labels[i, 0])[0]
    scores = per_query_scores(q_labels, db_labels, neighbors, k=5)
    metrics = {name: float(100 * scores[name].mean()) for name in ("mAP@5", "ACC@1")}
    config = {"model": {"name": "vgg19"}, "paths": {"data_dir": str(data_dir)}, "dataset": {"flag": "bloodmnist"}}
    folder = write_result(out, "paper", "bloodmnist", 28, "vgg19", metrics, config=config)
    np.save(folder / "neighbors.npy", neighbors)
    intervals = {"ACC@1": {"low": 60.0, "high": 70.0}, "mAP@5": {"low": 1.0, "high": 2.0}}
    write_result(out, "paper", "bloodmnist", 28, "resnet50", {"mAP@5": 64.0, "ACC@1": 65.0}, intervals=intervals)
    write_result(out, "paper", "bloodmnist", 28, "densenet121", {"mAP@5": 50.0, "ACC@1": 55.0})
    return out


def _half_width(hits: np.ndarray) -> str:
    bounds = metric_intervals({"ACC@1": hits}, SETTINGS)["ACC@1"]
    return f"{(bounds['high'] - bounds['low']) / 2:.2f}"


def test_tables_carry_intervals_and_marks(stats_sweep, tmp_path):
    report = build_report(
        load_cells(find_result_files([stats_sweep])), tmp_path / "r", figures=False, settings=SETTINGS
    )
    cells = report.cells
    table = metric_table(cells, "ACC@1", report.significance["paper"])
    breast, blood = table.column("BreastMNIST"), table.column("BloodMNIST")
    assert table.row("VGG19")[breast] == f"**90.00** ±{_half_width(COLUMN['vgg19'])}"
    assert table.row("ResNet50")[breast] == f"89.50≈ ±{_half_width(COLUMN['resnet50'])}"  # not worse than the best
    assert table.row("DenseNet121")[breast] == f"50.00 ±{_half_width(COLUMN['densenet121'])}"  # clearly worse
    assert table.row("CONCH")[breast] == f"50.00 ±{_half_width(COLUMN['conch'])}"
    # old results: rescored from neighbors.npy (7 of 10 first hits), stored interval, or missing
    rescored = _half_width(np.array([0.0] * 3 + [1.0] * 7))  # the same queries' ACC@1, rescored
    assert table.row("VGG19")[blood] == f"**70.00** ±{rescored}"
    assert report.significance["paper"].sources[("bloodmnist", 28, "vgg19")] == "neighbors.npy"
    assert table.row("ResNet50")[blood] == "65.00 ±5.00"  # result.json's own interval; untested, so unmarked
    assert table.row("DenseNet121")[blood] == "55.00 ±–"
    assert table.row("CONCH")[blood] == ""
    assert "≈ = not significantly worse than that best" in table.markdown()
    assert "Holm correction over all best-vs-other tests of this table" in table.markdown()
    # exact bounds in results.csv
    rows = {(r["dataset"], r["model"]): r for r in read_csv(report.out / "paper" / "results.csv")}
    bounds = metric_intervals({"ACC@1": COLUMN["vgg19"]}, SETTINGS)["ACC@1"]
    row = rows[("breastmnist", "vgg19")]
    assert (float(row["ACC@1_ci_low"]), float(row["ACC@1_ci_high"])) == pytest.approx((bounds["low"], bounds["high"]))
    assert rows[("bloodmnist", "densenet121")]["ACC@1_ci_low"] == ""


def test_pairwise_tables(stats_sweep, tmp_path):
    report = build_report(
        load_cells(find_result_files([stats_sweep])), tmp_path / "r", figures=False, settings=SETTINGS
    )
    rows = read_csv(report.out / "paper" / "pairwise.csv")
    breast = [r for r in rows if r["dataset"] == "breastmnist" and r["metric"] == "ACC@1"]
    assert [(r["a"], r["b"]) for r in breast] == [
        ("vgg19", "resnet50"),
        ("vgg19", "densenet121"),
        ("vgg19", "conch"),
        ("resnet50", "densenet121"),
        ("resnet50", "conch"),
        ("densenet121", "conch"),
    ]
    pair = {(r["a"], r["b"]): r for r in breast}
    assert float(pair[("vgg19", "densenet121")]["difference"]) == pytest.approx(40.0)
    assert pair[("vgg19", "densenet121")]["significant"] == "True"
    assert float(pair[("vgg19", "densenet121")]["p_adjusted"]) < 0.01
    twins = pair[("densenet121", "conch")]
    assert (float(twins["difference"]), float(twins["p_adjusted"]), twins["significant"]) == (0.0, 1.0, "False")
    assert pair[("vgg19", "resnet50")]["significant"] == "False"
    assert {r["correction"] for r in rows} == {"holm"} and {r["resamples"] for r in rows} == {"1000"}
    # the old-results column compares nothing: one model has per-query scores
    assert not [r for r in rows if r["dataset"] == "bloodmnist"]
    md = (report.out / "paper" / "pairwise.md").read_text()
    assert "## BreastMNIST, 28 px" in md and "| a − b | mAP@5 | ACC@1 |" in md
    assert "| DenseNet121 − CONCH | +0.00 [+0.00, +0.00] p=1.000 | +0.00 [+0.00, +0.00] p=1.000 |" in md
    assert "| VGG19 − DenseNet121 | **+32.00** [" in md


def test_figures_forest_and_cd(stats_sweep, tmp_path):
    import matplotlib.image as mpimg

    report = build_report(load_cells(find_result_files([stats_sweep])), tmp_path / "r", settings=SETTINGS)
    names = {p.name: p for p in report.files["paper"]}
    # CD: 3 models (VGG19, ResNet50, DenseNet121) on both datasets at 28 px
    for name in ("forest_ACC1.png", "forest_mAP5.png", "cd_ACC1_28.png", "cd_mAP5_28.png"):
        image = mpimg.imread(names[name])
        assert image.shape[0] >= 150 and image.shape[1] >= 300 and image[..., :3].std() > 0.05
    assert "paper/figures/forest_ACC1.png" in (report.out / "index.md").read_text()


def test_no_ci_gives_the_papers_shape(stats_sweep, tmp_path):
    cells = load_cells(find_result_files([stats_sweep]))
    report = build_report(cells, tmp_path / "r", figures=False, ci=False)
    tables = (report.out / "paper" / "tables.md").read_text()
    assert "±" not in tables and "≈" not in tables
    assert metric_table(cells, "ACC@1").row("VGG19")[1] == "**90.00**"
    assert "| VGG19 | **90.00** | **70.00** |" in tables
    assert not any("_ci_" in column for column in read_csv(report.out / "results.csv")[0])
    assert not (report.out / "paper" / "pairwise.csv").exists() and report.significance == {}


def test_cli_no_ci_and_protocols_without_intervals(stats_sweep, tmp_path):
    from cbmir.report.cli import main

    out = tmp_path / "r"
    assert main([str(stats_sweep), "--out", str(out), "--no-figures", "--no-ci"]) == 0
    assert "±" not in (out / "paper" / "tables.md").read_text() and not (out / "paper" / "pairwise.md").exists()
    assert main([str(stats_sweep), "--out", str(out), "--no-figures", "--resamples", "200", "--with-published"]) == 0
    assert "(200 resamples" in (out / "paper" / "tables.md").read_text() and (out / "paper" / "pairwise.md").exists()
    published = (out / "published" / "tables.md").read_text()  # no interval anywhere: the paper's shape
    assert "±" not in published and "97.05" in published and not (out / "published" / "pairwise.md").exists()


def test_per_class_table(tmp_path):
    out = tmp_path / "outputs"
    for model, a, b in (("vgg19", 80.0, 60.0), ("uni", 70.0, 90.0)):
        write_result(
            out,
            "standard",
            "breastmnist",
            28,
            model,
            {"P@5": (a + b) / 2, "P@5_macro": (a + b) / 2},
            per_class={"P@5": {"0": a, "1": b}},
        )
    report = build_report(load_cells(find_result_files([out])), tmp_path / "r", figures=False, settings=SETTINGS)
    md = (report.out / "standard" / "per_class.md").read_text()
    assert "## P@5 (%)" in md and "### BreastMNIST" in md
    assert "| Model | 0: malignant | 1: normal, benign | macro |" in md
    assert "| VGG19 | **80.00** | 60.00 | 70.00 |" in md
    assert "| UNI | 70.00 | **90.00** | **80.00** |" in md


def test_wandb_run_gets_the_pairwise_table(stats_sweep, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from cbmir.report import wandb_run

    logged: dict = {}

    class FakeRun:
        summary: dict = {}
        dir = str(tmp_path / "wandb" / "run" / "files")

        def log(self, payload):
            logged.update(payload)

        def finish(self):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeRun())
    report = build_report(
        load_cells(find_result_files([stats_sweep])), tmp_path / "r", figures=False, settings=SETTINGS
    )
    wandb_run.log_to_wandb(report, mode="offline", wandb_dir=tmp_path)
    table = logged["paper/pairwise"]
    assert table.columns[:6] == ["protocol", "dataset", "size", "metric", "a", "b"] and len(table.data) == 12
    assert "ACC@1_ci_low" in logged["paper/results"].columns


def test_metric_order_of_the_standard_metrics():
    names = ["MAP@R", "P@5_macro", "R-precision", "ACC@5", "mAP@5_macro", "nDCG@5", "P@5", "mMV@5", "ACC@1"]
    names += ["AP@5_textbook", "mAP@5", "R@5", "MRR@5", "ACC@3", "mMV@5_nearest", "zzz"]
    assert metric_order(names) == [
        "mAP@5",
        "mAP@5_macro",
        "mMV@5",
        "mMV@5_nearest",
        "ACC@1",
        "ACC@3",
        "ACC@5",
        "AP@5_textbook",
        "P@5",
        "P@5_macro",
        "R@5",
        "nDCG@5",
        "MRR@5",
        "MAP@R",
        "R-precision",
        "zzz",
    ]


def test_result_json_intervals_are_read(stats_sweep):
    folder = stats_sweep / "results" / "paper" / "bloodmnist" / "28" / "resnet50"
    (cell,) = load_cells([folder / "result.json"])
    assert cell.intervals == {"ACC@1": (60.0, 70.0), "mAP@5": (1.0, 2.0)}
    assert "intervals_ACC@1" not in cell.info and json.loads((folder / "result.json").read_text())["intervals"]
