"""A bench run end to end on tiny sizes: bench.json holds every ratio with its interval, rounds, noise and
stability, the disturbance of each section, and the table says why unstable figures are unstable."""

import json
import math

import pytest

from cbmir.bench.cli import main
from cbmir.bench.profiles import TARGETS

TINY = ["--override", "model.arch=test_resnet.r160_in1k", "--override", "model.dim=96"]
SMALL = [
    *("--min-rounds", "2", "--max-rounds", "2", "--warmup", "0", "--batches", "2", "--volumes", "2"),
    *("--slice-volumes", "1", "--search-shape", "400,20,64", "--loop-queries", "5", "--cache-images", "48,16"),
    *("--rss-images", "64", "--rss-size", "28", "--rss-model-batches", "1", "--batch-size", "16"),
]
FIGURES = ("pipeline_efficiency", "speedup_vs_conventional", "speedup_3d_batched", "speedup_search", "cache_speedup")


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def run_bench(tmp_path, *extra: str) -> dict:
    out = tmp_path / "bench" / "bench.json"
    main(["--quick", "--device", "cpu", *TINY, *SMALL, "--out", str(out), "--tmp-dir", str(tmp_path), *extra])
    return json.loads(out.read_text())


def test_quick_run_writes_every_ratio_with_its_interval_and_stability(tmp_path, capsys):
    result = run_bench(tmp_path, "--skip-memory", "--skip-serve")
    for key in FIGURES:
        assert positive(result[key]), (key, result[key])
        # two rounds give no 95 % interval of a median: the figure is there, its interval is not, and it says so
        assert result[f"{key}_ci"] is None
    (setting,) = result["settings"]
    for section in (setting, result["volume_3d"], result["search"], result["cache"]):
        assert section["rounds"] == 2 and section["stop"] == "max_rounds" and section["stable"] is False
        assert all(len(v) == 2 for v in section["samples"].values())
        assert all(math.isfinite(v) and v >= 0 for v in section["noise"].values())
        assert {"load_average", "other_cpu_s", "own_cpu_s", "other_cpu_share"} <= set(section["disturbance"])
    assert "pipeline_efficiency: no 95 % interval from 2 rounds" in setting["unstable_reasons"]
    assert (
        result["stable"] is False
        and "resnet50 28->32: pipeline_efficiency: no 95 % interval from 2 rounds" in (result["unstable_reasons"])
    )
    eff = result["targets"]["pipeline_efficiency"]
    assert eff["verdict"] == "not resolved" and eff["settings"]["resnet50 28->32"]["verdict"] == "not resolved"
    assert eff["stable"] is False and eff["settings"]["resnet50 28->32"]["stable"] is False
    assert math.isnan(result["peak_rss_gb"]) and "serve" not in result
    assert result["device"] == "cpu" and result["precision"] == "32-true" and result["weights"] == "random"
    assert result["profile"] == "quick" and result["quick"]
    assert result["num_workers"] == 0 and result["num_workers_config"] == "auto"
    assert {"cbmir", "torch", "timm", "lightning", "numpy"} <= set(result["versions"])
    m = result["machine"]
    assert m["cpu_model"] and m["torch_threads"] == result["threads"] and m["commit"]
    assert set(TARGETS) <= set(result["targets"])
    assert setting["images_per_run"] == 32 and setting["batches_per_run"] == 2
    assert setting["min_cosine_pipeline_vs_conventional"] > 0.99
    v = result["volume_3d"]
    assert v["side"] == 32 and v["slices"] == 64 and v["max_rel_diff_batched_vs_per_slice"] < 1e-3
    assert result["search"]["dim"] == 64 and result["search"]["top1_agreement"] >= 0.8
    c = result["cache"]
    # both paths measured; which is faster at this toy size under a parallel test run is noise, not plumbing
    assert c["rate_per_s"]["cached"] > 0 and c["rate_per_s"]["cold"] > 0 and positive(result["cache_speedup"])
    printed = capsys.readouterr().out
    assert "pipeline img/s" in printed and "targets (met:" in printed and "3D (" in printed
    assert "pipeline_efficiency >= 0.9: NOT RESOLVED (UNSTABLE: see below)" in printed
    assert "UNSTABLE (read these figures as noise" in printed


@pytest.mark.slow
def test_quick_run_measures_memory_in_its_own_process(tmp_path):
    result = run_bench(tmp_path, "--skip-3d", "--skip-search", "--skip-cache", "--skip-serve")
    m = result["memory"]
    assert m["images"] == 64 and m["shape"] == [64, 28, 28, 3] and m["num_workers"] == 0
    assert result["peak_rss_gb"] == m["peak_rss_gb"] >= m["baseline_rss_gb"] > 0
    assert m["full_split_phase"]["peak_total_pss_gb"] > 0


@pytest.mark.slow
def test_serve_section_queries_the_real_server_on_loopback(tmp_path):
    result = run_bench(
        tmp_path,
        *("--skip-3d", "--skip-search", "--skip-cache", "--skip-memory", "--serve-items", "300"),
        *("--serve-budget-s", "2", "--serve-clients", "3", "--serve-client-queries", "2"),
    )
    s = result["serve"]
    assert s["n_items"] == 300
    for key in ("image_query_ms", "concurrent_16_ms"):
        assert 0 < s[key]["p50"] <= s[key]["p95"] and s[key]["n"] >= 6
    assert s["concurrent_16_ms"]["clients"] == 3 and s["concurrent_16_ms"]["n"] % 6 == 0
    assert s["text_query_ms"]["p50"] is None and "no text tower" in s["text_query_ms"]["absent"]
    embed = s["image_query_parts_ms"]["embed"]["p50"]
    assert 0 < embed < s["image_query_ms"]["p50"]  # the client's time includes the server's embedding
    assert s["targets"]["text_query_ms"]["verdict"] == "absent"
    assert result["targets"]["serve.concurrent_16_p95_ms"]["verdict"] in ("met", "missed", "not resolved")
    assert s["disturbance"]["own_cpu_s"] > 0
