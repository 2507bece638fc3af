"""cbmir.report.figures (through build): one set of figures per protocol, never mixed, stale ones removed."""

from __future__ import annotations

from cbmir.report.build import build_report
from cbmir.report.figures import metric_slug, write_figures


def test_partial_mixed_protocols_and_figures(sweep_cells, tmp_path):
    import matplotlib.image as mpimg

    report = build_report(sweep_cells, tmp_path / "report")
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

    # redrawn without P@5: its figures are gone, not left stale beside the new ones
    standard = [c for c in sweep_cells if c.protocol == "standard"]
    for c in standard:
        del c.metrics["P@5"]
    written = write_figures(standard, [], report.out / "standard" / "figures")
    assert sorted(p.name for p in (report.out / "standard" / "figures").iterdir()) == sorted(p.name for p in written)
    assert {p.name for p in written} == {"heatmap_mAP5.png", "sizes_mAP5.png", "heatmap_ACC1.png", "sizes_ACC1.png"}


def test_metric_names_in_file_names():
    assert metric_slug("mAP@5") == "mAP5" and metric_slug("P@5") == "P5"
    assert metric_slug("recall @ 10/x") == "recall_10_x"


def test_a_model_keeps_its_colour_whatever_else_a_figure_holds():
    from cbmir.report.figures import model_color, model_colors

    assert model_colors(["uni", "my_model"])["my_model"] == model_colors(["my_model"])["my_model"]
    assert model_colors(["conch", "other", "my_model"])["my_model"] == model_color("my_model")
    assert model_color("uni") != model_color("conch")  # the study's models: distinct tab10 colours
