"""A bench run end to end on tiny sizes: bench.json holds every headline figure with its spread, and the table."""

import json
import math

import pytest

from cbmir.bench.cli import main
from cbmir.bench.profiles import TARGETS

TINY = ["--override", "model.arch=test_resnet.r160_in1k", "--override", "model.dim=96"]
SMALL = [
    *("--repeats", "2", "--warmup", "0", "--batches", "2", "--volumes", "2", "--slice-volumes", "1"),
    *("--search-shape", "400,20,64", "--loop-queries", "5", "--cache-images", "48,16", "--cache-repeats", "1"),
    *("--rss-images", "64", "--rss-size", "28", "--rss-model-batches", "1", "--batch-size", "16"),
]
FIGURES = ("pipeline_efficiency", "speedup_vs_conventional", "speedup_3d_batched", "speedup_search", "cache_speedup")


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def run_bench(tmp_path, *extra: str) -> dict:
    out = tmp_path / "bench" / "bench.json"
    main(["--quick", "--device", "cpu", *TINY, *SMALL, "--out", str(out), "--tmp-dir", str(tmp_path), *extra])
    return json.loads(out.read_text())


def test_quick_run_writes_every_figure_with_its_spread(tmp_path, capsys):
    result = run_bench(tmp_path, "--skip-memory")
    for key in FIGURES:
        lo, hi = result[f"{key}_spread"]
        assert positive(result[key]) and 0 < lo <= hi, (key, result[key], lo, hi)
        # with 2 repeats a ratio of medians is the mediant of the per-repeat ratios: inside their range
        assert lo <= result[key] <= hi, (key, result[key], lo, hi)
    assert math.isnan(result["peak_rss_gb"]) and result["targets"]["pipeline_efficiency"]["spread"]
    assert result["device"] == "cpu" and result["precision"] == "32-true" and result["weights"] == "random"
    assert result["profile"] == "quick" and result["quick"] and result["repeats"] == 2
    assert result["num_workers"] == 0 and result["num_workers_config"] == "auto"
    assert {"cbmir", "torch", "timm", "lightning", "numpy"} <= set(result["versions"])
    assert set(result["targets"]) == set(TARGETS)
    (setting,) = result["settings"]
    assert setting["images_per_run"] == 32 and setting["batches_per_run"] == 2
    v = result["volume_3d"]
    assert v["side"] == 32 and v["slices"] == 64 and v["max_rel_diff_batched_vs_per_slice"] < 1e-3
    assert result["search"]["dim"] == 64 and result["search"]["top1_agreement"] >= 0.8
    assert len(result["cache"]["seconds_cold"]) == 1
    assert result["cache"]["seconds_cold"][0] > result["cache"]["seconds_cached"][0] > 0
    printed = capsys.readouterr().out
    assert "pipeline img/s" in printed and "targets:" in printed and "3D (" in printed


@pytest.mark.slow
def test_quick_run_measures_memory_in_its_own_process(tmp_path):
    result = run_bench(tmp_path, "--skip-3d", "--skip-search", "--skip-cache")
    m = result["memory"]
    assert m["images"] == 64 and m["shape"] == [64, 28, 28, 3] and m["num_workers"] == 0
    assert result["peak_rss_gb"] == m["peak_rss_gb"] >= m["baseline_rss_gb"] > 0
    assert m["full_split_phase"]["peak_total_pss_gb"] > 0
