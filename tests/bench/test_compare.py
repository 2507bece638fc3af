"""``cbmir bench compare``: a synthetic regression is flagged, identical runs are not, drift under the threshold
or without significance is not, and a 1-thread run against a 2-thread one is."""

import json

import numpy as np
import pytest

from cbmir.bench.cli import main
from cbmir.bench.compare import compare, compare_samples

BASE = [1.00, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97, 1.00]  # median 1.0


def run_json(threads: int = 2, scale: float = 1.0, eff: float = 1.0, latency: float = 1.0) -> dict:
    """A bench.json with stored per-round samples: one setting, the search section and the serve section."""
    rate = [v * 500 * scale for v in BASE]
    return {
        "threads": threads,
        "device": "cpu",
        "machine": {"commit": "abc"},
        "load_average_start": [0.5, 0.5, 0.5],
        "load_average_end": [0.6, 0.5, 0.5],
        "settings": [
            {
                "setting": "resnet50 28->32",
                "samples": {"pipeline_efficiency": [v * 0.9 * eff for v in BASE], "rate_per_s.pipeline": rate},
            }
        ],
        "search": {"samples": {"speedup_search": [v * 60 for v in BASE]}},
        "serve": {"samples": {"image_query_ms": [v * 20 * latency for v in BASE]}, "lower_is_better": True},
    }


def verdicts(rows) -> dict:
    return {(r["section"], r["figure"]): r["verdict"] for r in rows}


def test_identical_runs_show_no_change():
    rows = compare(run_json(), run_json())
    assert len(rows) == 4 and {r["verdict"] for r in rows} == {"no significant change"}
    assert all(r["change"] == 0.0 and r["p"] == 1.0 for r in rows)


def test_a_synthetic_regression_is_flagged_with_its_change_and_interval():
    row = compare_samples(BASE, [v * 0.8 for v in BASE], threshold=0.05)
    assert row["verdict"] == "slower" and row["change"] == pytest.approx(-0.2)
    assert row["p"] < 0.001 and row["old"] == pytest.approx(1.0) and row["new"] == pytest.approx(0.8)
    lo, hi = row["change_ci"]
    assert lo <= -0.2 <= hi and hi < 0
    assert compare_samples(BASE, [v * 1.25 for v in BASE], threshold=0.05)["verdict"] == "faster"
    # latency: higher is worse
    assert compare_samples(BASE, [v * 1.3 for v in BASE], threshold=0.05, lower_is_better=True)["verdict"] == "slower"


def test_small_or_insignificant_changes_are_not_counted():
    # 3 % slower, every sample lower: significant (p < 0.001) but under the 5 % threshold
    small = compare_samples(BASE, [v * 0.97 for v in BASE], threshold=0.05)
    assert small["p"] < 0.05 and small["change"] == pytest.approx(-0.03) and small["verdict"] == "no significant change"
    assert compare_samples(BASE, [v * 0.97 for v in BASE], threshold=0.02)["verdict"] == "slower"
    # the median 10 % lower, but the samples overlap: not significant
    noisy_old, noisy_new = [1.0, 1.5, 0.6, 1.2, 0.8, 1.1], [0.9, 1.4, 0.5, 1.3, 0.7, 0.85]
    row = compare_samples(noisy_old, noisy_new, threshold=0.05)
    assert row["p"] > 0.05 and row["change"] < -0.05 and row["verdict"] == "no significant change"


def test_fail_on_regression_names_setting_and_figure(tmp_path, capsys):
    old, new, same = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "same.json"
    old.write_text(json.dumps(run_json()))
    same.write_text(json.dumps(run_json()))
    new.write_text(json.dumps(run_json(eff=0.85, latency=1.4)))
    assert main(["compare", str(old), str(same), "--fail-on-regression"]) == 0
    capsys.readouterr()
    assert main(["compare", str(old), str(new)]) == 0  # reported, not failed, without the flag
    assert main(["compare", str(old), str(new), "--fail-on-regression"]) == 1
    captured = capsys.readouterr()
    assert "resnet50 28->32 · pipeline_efficiency: 0.9 -> 0.765 (-15.0%" in captured.out
    assert "cbmir: regression: resnet50 28->32 · pipeline_efficiency (-15.0%)" in captured.err
    assert "cbmir: regression: serve · image_query_ms (+40.0%)" in captured.err
    assert "rate_per_s.pipeline" not in captured.err and "speedup_search" not in captured.err
    assert main(["compare", str(old), str(tmp_path / "missing.json")]) == 2
    assert "cbmir: error:" in capsys.readouterr().err


def test_a_one_thread_run_against_a_two_thread_run_is_flagged(tmp_path, capsys):
    # one thread instead of two: the absolute rate drops (here by 45 %), the ratios barely move
    old, new = tmp_path / "two.json", tmp_path / "one.json"
    old.write_text(json.dumps(run_json(threads=2)))
    new.write_text(json.dumps(run_json(threads=1, scale=0.55, eff=0.99)))
    assert main(["compare", str(old), str(new), "--fail-on-regression"]) == 1
    captured = capsys.readouterr()
    assert "threads: 2 -> 1" in captured.out
    assert "cbmir: regression: resnet50 28->32 · rate_per_s.pipeline (-45.0%)" in captured.err
    rows = compare(json.loads(old.read_text()), json.loads(new.read_text()))
    assert verdicts(rows)[("resnet50 28->32", "pipeline_efficiency")] == "no significant change"
    assert np.isclose(next(r["change"] for r in rows if r["figure"] == "rate_per_s.pipeline"), -0.45)
