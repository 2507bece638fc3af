"""The trade-off table and Pareto figure from real approximate cells, and the Pareto rule itself."""

import pytest

from cbmir.cell.run import run_cell
from cbmir.report.tradeoff import draw_tradeoff, load_results, markdown_table, plot_tradeoff, tradeoff_rows


def row(setting, memory, qps, score):
    return {
        "dataset": "d", "size": 28, "model": "m", "protocol": "standard", "k": 5, "n_database": 10,
        "embedding_dim": 4, "n_queries": 5, "queries_per_second": qps, "metrics": {"mAP@5": score},
        "approximate": {"index": setting, "memory_bytes": memory, "recall@5": 0.9, "metric_delta": {"mAP@5": -1}},
    }  # fmt: skip


def test_pareto_front():
    rows = tradeoff_rows([row("a", 100, 10, 90), row("b", 50, 20, 80), row("c", 60, 15, 70), row("d", 100, 10, 90.5)])
    assert {r["setting"]: r["pareto"] for r in rows} == {"a": False, "b": True, "c": False, "d": True}


def test_table_and_figure_from_real_cells(cell_cfg, tmp_path):
    settings = [
        [],
        ["search.index=HNSW16"],
        ["search.index='IVF2,PQ8x4'", "search.nprobe=1"],
        ["store.dtype=float16"],
        ["search.pca=8"],
    ]
    for extra in settings:
        run_cell(cell_cfg("protocol=standard", "dataset=bloodmnist", *extra))
    out = tmp_path / "out"
    rows = tradeoff_rows(load_results(out / "results"), dataset="bloodmnist", size=28, model="tiny_resnet")
    by = {r["setting"]: r for r in rows}
    assert set(by) == {"Flat (exact)", "HNSW16", "IVF2,PQ8x4 nprobe=1", "SQfp16", "PCA8,L2norm,Flat"}
    assert by["Flat (exact)"]["recall"] == 1.0 and by["Flat (exact)"]["Δ mAP@5"] == 0.0
    assert by["SQfp16"]["memory_mb"] == pytest.approx(by["Flat (exact)"]["memory_mb"] / 2, rel=0.1)
    assert any(r["pareto"] for r in rows)
    assert "| Flat (exact) |" in markdown_table(rows)
    png = plot_tradeoff(rows, tmp_path / "tradeoff.png", title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # cbmir.report writes the same table (and figure) for the folders it collects, with no extra command
    from cbmir.report.build import build_report
    from cbmir.report.collect import find_result_files, load_cells

    report = build_report(
        load_cells(find_result_files([out / "results"])), tmp_path / "report", figures=False, ci=False
    )
    table = (report.out / "tradeoff" / "standard_bloodmnist_28_tiny_resnet.md").read_text()
    assert table.splitlines()[2:] == markdown_table(rows).splitlines()
    assert "tradeoff/standard_bloodmnist_28_tiny_resnet.md" in (report.out / "index.md").read_text()


def test_front_labels_never_overlap():
    """Eight Pareto settings crowded into a corner: after placement no label's box meets another's."""
    rows = tradeoff_rows([row(f"IVF{2**i},PQ{i}", 100 - 8 * i, 10 + i, 90 - i) for i in range(8)])
    assert sum(r["pareto"] for r in rows) == 8
    fig = draw_tradeoff(rows, title="crowded")
    (ax,) = [a for a in fig.axes if a.texts]
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    assert len(boxes) == 8
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
