"""cbmir.report on synthetic result folders with known numbers: CSV, tables, the paper comparison, figures, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cbmir import report as R

FIVE = ("mAP@5", "mMV@5", "ACC@1", "ACC@3", "ACC@5")


def write_result(
    root: Path, protocol: str, dataset: str, size: int, model: str, metrics: dict[str, float], **extra
) -> Path:
    """A result.json as a cell writes it (the fields the report reads, plus config noise it must ignore)."""
    folder = root / "results" / protocol / dataset / str(size) / model
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "protocol": protocol,
        "dataset": dataset,
        "size": size,
        "model": model,
        "k": 5,
        "metric": "cosine" if protocol == "standard" else "l2",
        "n_queries": 10,
        "n_database": 40,
        "embedding_dim": 96,
        "metrics": metrics,
        "embeddings": {"database": "/x/db.npy", "query": "/x/q.npy"},
        "seconds": {"extraction": 1.5, "search": 0.25, "total": 2.0},
        "index_gb": 0.0001,
        "unit_norm": False,
        "cached": {"database": False, "query": True},
        "precision": "32-true",
        "versions": {"cbmir": "0.1.0", "torch": "2.5.0"},
        "config": {"model": {"name": model}},
        "cbmir_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
        **extra,
    }
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def metrics_of(base: float) -> dict[str, float]:
    return {m: base + i for i, m in enumerate(FIVE)}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


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


def test_results_csv_carries_every_number(sweep, tmp_path):
    cells = R.load_cells(R.find_result_files([sweep]))
    assert len(cells) == 9
    # paper order: protocol, dataset, size, model
    assert [c.key for c in cells][:3] == [
        ("paper", "breastmnist", 28, "vgg19"),
        ("paper", "breastmnist", 28, "uni"),
        ("paper", "breastmnist", 64, "vgg19"),
    ]
    report = R.build_report(cells, tmp_path / "report", figures=False)
    rows = read_csv(report.out / "results.csv")
    assert len(rows) == 9
    row = next(
        r for r in rows if (r["protocol"], r["dataset"], r["size"], r["model"]) == ("paper", "bloodmnist", "64", "uni")
    )
    assert float(row["mAP@5"]) == 95.00 and float(row["ACC@1"]) == 93.00
    assert row["embedding_dim"] == "96" and row["metric"] == "l2" and row["k"] == "5"
    assert float(row["seconds_extraction"]) == 1.5 and float(row["seconds_total"]) == 2.0
    assert row["version_torch"] == "2.5.0" and row["cached_query"] == "True"
    assert "config" not in row and "embeddings" not in row
    standard = next(r for r in rows if r["model"] == "dinov2_s")
    assert float(standard["P@5"]) == 66.66
    assert next(r for r in rows if r["model"] == "vgg19")["P@5"] == ""  # a metric a cell lacks is empty, not 0
    # per protocol, only that protocol's cells
    assert {r["protocol"] for r in read_csv(report.out / "standard" / "results.csv")} == {"standard"}


def test_metric_table_in_the_papers_shape(sweep):
    cells = [c for c in R.load_cells(R.find_result_files([sweep])) if c.protocol == "paper"]
    table = R.metric_table(cells, "mAP@5")
    assert table.header[:3] == ["Model", "BreastMNIST", "BloodMNIST"]
    assert table.rows[0][1] == "28 / 64"  # the size row
    vgg, uni = table.row("VGG19"), table.row("UNI")
    assert [r[0] for r in table.rows[1:]] == ["VGG19", "UNI"]  # the paper's model order
    # values across sizes, best per dataset and size in bold
    assert vgg[table.column("BreastMNIST")] == "83.18 / **85.45**"
    assert uni[table.column("BreastMNIST")] == "**84.00** / 80.00"
    assert vgg[table.column("BloodMNIST")] == f"79.24 / {R.MISSING}"  # partial sweep: the missing size is marked
    assert uni[table.column("BloodMNIST")] == "**90.00** / **95.00**"
    # mean over 2D datasets per size: at 64, VGG19 lacks BloodMNIST so it has no mean
    mean = table.column("mean 2D")
    assert vgg[mean] == f"81.21 / {R.MISSING}"  # (83.18 + 79.24) / 2
    assert uni[mean] == "**87.00** / **87.50**"
    # average rank over the (dataset, size) columns each model has
    rank = table.column("avg rank (cells)")
    assert vgg[rank] == "1.67 (3)" and uni[rank] == "1.25 (4)"
    # a model absent from a whole dataset gets a blank cell, not dashes
    table = R.metric_table([c for c in cells if not (c.model == "vgg19" and c.dataset == "bloodmnist")], "mAP@5")
    assert table.row("VGG19")[table.column("BloodMNIST")] == ""


def test_tie_gets_average_rank_and_both_bold(sweep):
    cells = [c for c in R.load_cells(R.find_result_files([sweep])) if c.protocol == "paper"]
    table = R.metric_table(cells, "ACC@1")
    assert table.row("VGG19")[table.column("BreastMNIST")] == "**79.48** / **82.05**"
    assert table.row("UNI")[table.column("BreastMNIST")] == "70.00 / **82.05**"


def test_paper_results_are_packaged_and_mapped():
    paper = R.load_paper()
    assert len(paper) == 251
    missing = set(R.study_cells()) - set(paper)
    assert missing == {("breastmnist", 64, "medclip")}
    assert paper[("bloodmnist", 224, "uni")]["mAP@5"] == 97.05
    assert paper[("breastmnist", 28, "vgg19")] == {
        "mAP@5": 83.18,
        "mMV@5": 83.33,
        "ACC@1": 79.48,
        "ACC@3": 92.94,
        "ACC@5": 98.71,
    }
    assert paper[("synapsemnist3d", 64, "conch")]["mAP@5"] == 80.40
    assert set(R.PAPER_MODELS) == {m for _, _, m in paper} and set(R.PAPER_DATASETS) == {d for d, _, _ in paper}


def test_comparison_with_the_paper(tmp_path):
    out = tmp_path / "outputs"
    write_result(out, "paper", "bloodmnist", 224, "uni", {"mAP@5": 97.304, "ACC@1": 96.78, "P@5": 1.0})
    write_result(out, "paper", "breastmnist", 28, "vgg19", {"mAP@5": 83.18, "ACC@1": 75.48})
    write_result(out, "paper", "breastmnist", 64, "medclip", {"mAP@5": 80.0})  # lost from the paper's tables
    write_result(out, "paper", "breastmnist", 28, "dinov2_s", {"mAP@5": 50.0})  # not in the paper
    write_result(out, "paper", "octmnist", 28, "uni", {"mAP@5": 50.0})  # not in the paper
    write_result(out, "standard", "bloodmnist", 224, "uni", {"mAP@5": 10.0})  # another protocol: never compared
    cells = R.load_cells(R.find_result_files([out]))
    rows = R.compare_with_paper(cells)
    got = {(r["dataset"], r["size"], r["model"], r["metric"]): r for r in rows}
    assert set(got) == {
        ("bloodmnist", 224, "uni", "mAP@5"),
        ("bloodmnist", 224, "uni", "ACC@1"),
        ("breastmnist", 28, "vgg19", "mAP@5"),
        ("breastmnist", 28, "vgg19", "ACC@1"),
        ("breastmnist", 64, "medclip", "mAP@5"),
    }
    uni = got[("bloodmnist", 224, "uni", "mAP@5")]
    assert (uni["cbmir"], uni["paper"], uni["diff"]) == (97.304, 97.05, 0.25)  # ours rounded to 2 decimals first
    assert got[("bloodmnist", 224, "uni", "ACC@1")]["diff"] == 0.0
    assert got[("breastmnist", 28, "vgg19", "ACC@1")]["diff"] == -4.0
    medclip = got[("breastmnist", 64, "medclip", "mAP@5")]
    assert medclip["paper"] is None and medclip["diff"] is None  # missing, never zero

    summary = {(s["model"], s["metric"]): s for s in R.summarize_comparison(rows)}
    assert summary[("uni", "all")]["mean_abs_diff"] == 0.125
    assert (summary[("uni", "all")]["within_1"], summary[("uni", "all")]["within_3"]) == (2, 2)
    assert (summary[("vgg19", "all")]["within_1"], summary[("vgg19", "all")]["within_3"]) == (1, 1)
    assert summary[("vgg19", "all")]["mean_abs_diff"] == 2.0 and summary[("vgg19", "all")]["mean_diff"] == -2.0
    assert summary[("medclip", "all")]["n"] == 0 and summary[("medclip", "all")]["missing_paper"] == 1
    assert summary[("medclip", "all")]["mean_abs_diff"] is None
    assert summary[("all", "all")]["n"] == 4 and summary[("all", "mAP@5")]["mean_abs_diff"] == 0.125

    report = R.build_report(cells, tmp_path / "report", figures=False)
    csv_rows = read_csv(report.out / "paper" / "comparison.csv")
    medclip_row = next(r for r in csv_rows if r["model"] == "medclip")
    assert medclip_row["paper"] == "" and medclip_row["diff"] == ""
    md = (report.out / "paper" / "comparison.md").read_text()
    assert "97.30 / 97.05 (+0.25)" in md
    assert f"80.00 / {R.MISSING} ({R.MISSING})" in md
    assert not (report.out / "standard" / "comparison.md").exists()


def test_partial_mixed_protocols_and_figures(sweep, tmp_path):
    import matplotlib.image as mpimg

    cells = R.load_cells(R.find_result_files([sweep]))
    report = R.build_report(cells, tmp_path / "report")
    assert set(report.files) == {"paper", "standard"}
    paper_md = (report.out / "paper" / "tables.md").read_text()
    standard_md = (report.out / "standard" / "tables.md").read_text()
    # never mixed: each protocol's numbers only in its own tables
    assert "83.18" in paper_md and "11.11" not in paper_md and "dinov2_s" not in paper_md
    assert "11.11" in standard_md and "83.18" not in standard_md and "## P@5 (%)" in standard_md
    assert "Missing: VGG19/BloodMNIST/64" in paper_md
    pngs = {p.name: p for p in report.files["paper"] if p.suffix == ".png"}
    assert set(pngs) == {
        "heatmap_mAP5.png",
        "sizes_mAP5.png",
        "heatmap_ACC1.png",
        "sizes_ACC1.png",
        "paper_vs_cbmir.png",
    }
    for path in pngs.values():
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 300
        assert image[..., :3].std() > 0.05  # something is drawn
    assert not any(p.name == "paper_vs_cbmir.png" for p in report.files["standard"])
    index = (report.out / "index.md").read_text()
    assert "paper/tables.md" in index and "standard/figures/heatmap_P5.png" in index


def test_duplicates_bad_files_and_inputs(sweep, tmp_path, caplog):
    other = tmp_path / "other"
    write_result(other, "paper", "breastmnist", 28, "vgg19", {"mAP@5": 99.99}, created="2030-01-01T00:00:00+00:00")
    broken = other / "results" / "paper" / "broken" / "28" / "x"
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{not json")
    single = sweep / "results" / "paper" / "bloodmnist" / "28" / "uni"
    files = R.find_result_files([sweep, other, single, single / "result.json", tmp_path / "nowhere"])
    assert len(files) == 11  # 9 + 2 in other; the single folder and file are not counted twice
    cells = R.load_cells(files)
    assert len(cells) == 9  # the broken file is skipped, the duplicate cell resolved
    vgg = next(c for c in cells if c.key == ("paper", "breastmnist", 28, "vgg19"))
    assert vgg.metrics["mAP@5"] == 99.99  # the newest result wins
    assert "found twice" in caplog.text and "broken" in caplog.text


def test_multirun_folder_maps_jobs_to_their_cells(sweep, tmp_path, monkeypatch):
    job = tmp_path / "multirun" / "2025-01-01" / "00-00-00" / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(
        f"paths: {{output_dir: {sweep}}}\nsize: 64\nmodel: {{name: uni}}\n"
        "dataset: {name: bloodmnist, dims: 2}\nprotocol: {name: paper, metric: l2}\n"
    )
    files = R.find_result_files([tmp_path / "multirun"])
    assert files == [(sweep / "results" / "paper" / "bloodmnist" / "64" / "uni" / "result.json").resolve()]


def test_cli(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert R.main([str(sweep), "--out", str(out), "--no-figures", "--with-published"]) == 0
    printed = capsys.readouterr().out
    assert "vs paper: mean |Δ|" in printed
    assert (out / "paper" / "comparison.md").exists() and (out / "published" / "tables.md").exists()
    assert "97.05" in (out / "published" / "tables.md").read_text()
    assert not (out / "paper" / "figures").exists()
    assert R.main([str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 1


def test_wandb_offline_run(sweep, tmp_path):
    pytest.importorskip("wandb")
    cells = [c for c in R.load_cells(R.find_result_files([sweep])) if c.protocol == "paper"]
    report = R.build_report(cells, tmp_path / "report", figures=False)
    fake_png = tmp_path / "report" / "paper" / "figures" / "x.png"
    fake_png.parent.mkdir(parents=True)
    import matplotlib.image as mpimg

    mpimg.imsave(fake_png, np.zeros((8, 8, 3)))
    report.files["paper"].append(fake_png)
    where = R.log_to_wandb(report, mode="offline", wandb_dir=tmp_path / "wb")
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and Path(where) == runs[0]
    assert list(runs[0].glob("*.wandb"))
