"""cbmir.report.tables: results.csv carries every number; tables.md has the paper's shape (sizes, bold, means, rank)."""

from __future__ import annotations

from cbmir.report.build import build_report
from cbmir.report.naming import MISSING
from cbmir.report.tables import coverage, metric_table
from tests.helpers.result_files import read_csv


def test_results_csv_carries_every_number(sweep_cells, tmp_path):
    cells = sweep_cells
    assert len(cells) == 9
    # paper order: protocol, dataset, size, model
    assert [c.key for c in cells][:3] == [
        ("paper", "breastmnist", 28, "vgg19"),
        ("paper", "breastmnist", 28, "uni"),
        ("paper", "breastmnist", 64, "vgg19"),
    ]
    report = build_report(cells, tmp_path / "report", figures=False)
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
    # no temporary file of the atomic writes is left behind
    assert not list(report.out.rglob("*.tmp"))


def test_metric_table_in_the_papers_shape(paper_cells):
    cells = paper_cells
    table = metric_table(cells, "mAP@5")
    assert table.header[:3] == ["Model", "BreastMNIST", "BloodMNIST"]
    assert table.rows[0][1] == "28 / 64"  # the size row
    vgg, uni = table.row("VGG19"), table.row("UNI")
    assert [r[0] for r in table.rows[1:]] == ["VGG19", "UNI"]  # the paper's model order
    # values across sizes, best per dataset and size in bold
    assert vgg[table.column("BreastMNIST")] == "83.18 / **85.45**"
    assert uni[table.column("BreastMNIST")] == "**84.00** / 80.00"
    assert vgg[table.column("BloodMNIST")] == f"79.24 / {MISSING}"  # partial sweep: the missing size is marked
    assert uni[table.column("BloodMNIST")] == "**90.00** / **95.00**"
    # mean over 2D datasets per size: at 64, VGG19 lacks BloodMNIST so it has no mean
    mean = table.column("mean 2D")
    assert vgg[mean] == f"81.21 / {MISSING}"  # (83.18 + 79.24) / 2
    assert uni[mean] == "**87.00** / **87.50**"
    # average rank over the (dataset, size) columns each model has
    rank = table.column("avg rank (cells)")
    assert vgg[rank] == "1.67 (3)" and uni[rank] == "1.25 (4)"
    # a model absent from a whole dataset gets a blank cell, not dashes
    table = metric_table([c for c in cells if not (c.model == "vgg19" and c.dataset == "bloodmnist")], "mAP@5")
    assert table.row("VGG19")[table.column("BloodMNIST")] == ""


def test_tie_gets_average_rank_and_both_bold(paper_cells):
    table = metric_table(paper_cells, "ACC@1")
    assert table.row("VGG19")[table.column("BreastMNIST")] == "**79.48** / **82.05**"
    assert table.row("UNI")[table.column("BreastMNIST")] == "70.00 / **82.05**"


def test_coverage_counts_the_grid_seen(paper_cells):
    n_expected, missing = coverage(paper_cells)
    assert n_expected == 8 and missing == [("bloodmnist", 64, "vgg19")]
