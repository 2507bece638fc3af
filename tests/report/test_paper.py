"""cbmir.report.paper: the packaged published numbers, mapped to the study's names only, and the comparison."""

from __future__ import annotations

import pytest

from cbmir.layout import paper_grid
from cbmir.report.build import build_report
from cbmir.report.collect import find_result_files, load_cells
from cbmir.report.naming import MISSING
from cbmir.report.paper import compare_with_paper, load_paper, published_cells, study_cells, summarize_comparison
from tests.helpers.result_files import read_csv, write_result


def test_paper_results_are_packaged_and_mapped():
    paper = load_paper()
    assert len(paper) == 251
    assert len(study_cells()) == 252
    missing = set(study_cells()) - set(paper)
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
    grid = paper_grid()
    assert set(grid["model"]) == {m for _, _, m in paper} and set(grid["dataset"]) == {d for d, _, _ in paper}
    assert {c.protocol for c in published_cells(paper)} == {"published"}


def test_the_paper_maps_to_the_study_only(tmp_path):
    """OctMNIST has a label, but it is not in the study: a published row for it is an error, never matched."""
    header = "size,dataset,model,mAP@5,mMV@5,ACC@1,ACC@3,ACC@5\n"
    good = tmp_path / "good.csv"
    good.write_text(header + "28,BreastMNIST,ResNet50,1,2,3,4,\n")
    assert load_paper(good) == {
        ("breastmnist", 28, "resnet50"): {"mAP@5": 1.0, "mMV@5": 2.0, "ACC@1": 3.0, "ACC@3": 4.0}
    }
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "28,OctMNIST,ResNet50,1,2,3,4,5\n")
    with pytest.raises(ValueError, match="bad.csv:2: unknown dataset or model 'OctMNIST'"):
        load_paper(bad)
    bad.write_text("size,dataset,model,mAP@5\n")
    with pytest.raises(ValueError, match="columns"):
        load_paper(bad)


def test_comparison_with_the_paper(tmp_path):
    out = tmp_path / "outputs"
    write_result(out, "paper", "bloodmnist", 224, "uni", {"mAP@5": 97.304, "ACC@1": 96.78, "P@5": 1.0})
    write_result(out, "paper", "breastmnist", 28, "vgg19", {"mAP@5": 83.18, "ACC@1": 75.48})
    write_result(out, "paper", "breastmnist", 64, "medclip", {"mAP@5": 80.0})  # lost from the paper's tables
    write_result(out, "paper", "breastmnist", 28, "dinov2_s", {"mAP@5": 50.0})  # not in the paper
    write_result(out, "paper", "octmnist", 28, "uni", {"mAP@5": 50.0})  # not in the paper
    write_result(out, "standard", "bloodmnist", 224, "uni", {"mAP@5": 10.0})  # another protocol: never compared
    cells = load_cells(find_result_files([out]))
    rows = compare_with_paper(cells)
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

    summary = {(s["model"], s["metric"]): s for s in summarize_comparison(rows)}
    assert summary[("uni", "all")]["mean_abs_diff"] == 0.125
    assert (summary[("uni", "all")]["within_1"], summary[("uni", "all")]["within_3"]) == (2, 2)
    assert (summary[("vgg19", "all")]["within_1"], summary[("vgg19", "all")]["within_3"]) == (1, 1)
    assert summary[("vgg19", "all")]["mean_abs_diff"] == 2.0 and summary[("vgg19", "all")]["mean_diff"] == -2.0
    assert summary[("medclip", "all")]["n"] == 0 and summary[("medclip", "all")]["missing_paper"] == 1
    assert summary[("medclip", "all")]["mean_abs_diff"] is None
    assert summary[("all", "all")]["n"] == 4 and summary[("all", "mAP@5")]["mean_abs_diff"] == 0.125

    report = build_report(cells, tmp_path / "report", figures=False)
    csv_rows = read_csv(report.out / "paper" / "comparison.csv")
    medclip_row = next(r for r in csv_rows if r["model"] == "medclip")
    assert medclip_row["paper"] == "" and medclip_row["diff"] == ""
    md = (report.out / "paper" / "comparison.md").read_text()
    assert "97.30 / 97.05 (+0.25)" in md
    assert f"80.00 / {MISSING} ({MISSING})" in md
    assert not (report.out / "standard" / "comparison.md").exists()
    summary_rows = read_csv(report.out / "paper" / "comparison_summary.csv")
    assert {(r["model"], r["metric"]) for r in summary_rows} == set(summary)
