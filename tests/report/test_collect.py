"""cbmir.report.collect: result files under folders, result folders and Hydra multirun dirs; duplicates; bad files."""

from __future__ import annotations

import json

import pytest

from cbmir.report.cells import cell_from_result
from cbmir.report.collect import find_result_files, load_cells
from tests.helpers.result_files import write_result


def test_duplicates_bad_files_and_inputs(sweep, tmp_path, caplog):
    other = tmp_path / "other"
    write_result(other, "paper", "breastmnist", 28, "vgg19", {"mAP@5": 99.99}, created="2030-01-01T00:00:00+00:00")
    broken = other / "results" / "paper" / "broken" / "28" / "x"
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{not json")
    single = sweep / "results" / "paper" / "bloodmnist" / "28" / "uni"
    files = find_result_files([sweep, other, single, single / "result.json", tmp_path / "nowhere"])
    assert len(files) == 11  # 9 + 2 in other; the single folder and file are not counted twice
    cells = load_cells(files)
    assert len(cells) == 9  # the broken file is skipped, the duplicate cell resolved
    vgg = next(c for c in cells if c.key == ("paper", "breastmnist", 28, "vgg19"))
    assert vgg.metrics["mAP@5"] == 99.99  # the newest result wins
    assert "found twice" in caplog.text and "broken" in caplog.text and "does not exist" in caplog.text


def test_multirun_folder_maps_jobs_to_their_cells(sweep, tmp_path, caplog):
    runs = tmp_path / "multirun" / "2025-01-01" / "00-00-00"
    for job, (size, model) in enumerate([(64, "uni"), (64, "vgg19")]):  # vgg19/bloodmnist/64 never finished
        (runs / str(job) / ".hydra").mkdir(parents=True)
        (runs / str(job) / ".hydra" / "config.yaml").write_text(
            f"paths: {{output_dir: {sweep}}}\nsize: {size}\nmodel: {{name: {model}}}\n"
            "dataset: {name: bloodmnist, dims: 2}\nprotocol: {name: paper, metric: l2}\n"
        )
    files = find_result_files([tmp_path / "multirun"])
    assert files == [(sweep / "results" / "paper" / "bloodmnist" / "64" / "uni" / "result.json").resolve()]
    assert "no result at" in caplog.text


def test_a_result_is_flattened_for_the_csv():
    result = json.loads(
        '{"protocol": "paper", "dataset": "breastmnist", "size": 28, "model": "uni", "metrics": {"mAP@5": 80, '
        '"P@5": null}, "versions": {"torch": "2.5"}, "config": {"a": 1}, "embeddings": {"query": "q.npy"}, '
        '"seconds": {"total": 2.0, "parts": [1, 1]}, "labels": [0, 1], "k": 5}'
    )
    cell = cell_from_result(result)
    assert cell.key == ("paper", "breastmnist", 28, "uni")
    assert cell.metrics == {"mAP@5": 80.0}  # a null metric is absent, not zero
    assert cell.info == {"version_torch": "2.5", "seconds_total": 2.0, "k": 5}
    with pytest.raises(ValueError, match="no size, metrics"):
        cell_from_result({"protocol": "paper", "dataset": "breastmnist", "model": "uni"})
