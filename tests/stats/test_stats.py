"""Bootstrap intervals, paired tests, corrections and rank statistics: exact where the math allows."""

import numpy as np
import pytest
from scipy import stats as sps

from cbmir.errors import ConfigError
from cbmir.stats.bootstrap import (
    StatsSettings,
    interval,
    jackknife_means,
    resample_counts,
    resampled_means,
)
from cbmir.stats.paired import adjust_pvalues, compare_models, holm, metric_intervals, sign_flip_pvalues
from cbmir.stats.ranks import critical_difference, draw_cd_diagram, rank_models


def test_settings_validated_with_config_errors():
    assert StatsSettings.from_config(None) == StatsSettings()
    assert StatsSettings.from_config({"level": 0.9, "method": "bca"}).level == 0.9
    for bad, match in [
        ({"level": 1.5}, "stats.level"),
        ({"resamples": 10}, "stats.resamples"),
        ({"seed": -1}, "stats.seed"),
        ({"method": "normal"}, "stats.method"),
        ({"test": "t"}, "stats.test"),
        ({"correction": "bonferroni"}, "stats.correction"),
        ({"leak_tolerance": -1}, "stats.leak_tolerance"),
        ({"levels": 0.9}, "unknown keys"),
    ]:
        with pytest.raises(ConfigError, match=match):
            StatsSettings.from_config(bad)


def test_resample_counts_are_multinomial_and_seeded():
    chunks = list(resample_counts(7, 1000, seed=3))
    counts = np.concatenate(chunks)
    assert counts.shape == (1000, 7) and np.all(counts.sum(1) == 7)
    np.testing.assert_array_equal(counts, np.concatenate(list(resample_counts(7, 1000, seed=3))))
    assert not np.array_equal(counts, np.concatenate(list(resample_counts(7, 1000, seed=4))))
    assert counts.mean() == pytest.approx(1.0, abs=0.02)


def test_resampled_means_equal_index_resampling():
    """The count-matrix product is the textbook bootstrap: the mean of the values at the drawn indices."""
    x = np.random.default_rng(0).normal(size=50)
    s = StatsSettings(resamples=200, seed=1)
    rng = np.random.default_rng(1)
    expected = np.array([x[rng.integers(0, 50, 50)].mean() for _ in range(200)])
    np.testing.assert_allclose(resampled_means(x[:, None], s)[:, 0, 0], expected, rtol=1e-12)


def test_bootstrap_reproducible_for_a_seed_and_close_to_scipy():
    x = np.random.default_rng(1).binomial(1, 0.3, size=400).astype(float)
    s = StatsSettings(resamples=5000, seed=7)
    a, b = metric_intervals({"ACC@1": x}, s), metric_intervals({"ACC@1": x}, s)
    assert a == b
    assert a["ACC@1"] | {} == {**a["ACC@1"], "level": 0.95, "method": "percentile", "resamples": 5000, "seed": 7}
    ref = sps.bootstrap((x,), np.mean, n_resamples=5000, method="percentile", random_state=0).confidence_interval
    assert a["ACC@1"]["low"] == pytest.approx(100 * ref.low, abs=0.6)
    assert a["ACC@1"]["high"] == pytest.approx(100 * ref.high, abs=0.6)
    other = metric_intervals({"ACC@1": x}, StatsSettings(resamples=5000, seed=8))
    assert other != a


def test_bca_matches_scipy():
    x = np.random.default_rng(2).exponential(size=200)  # skewed: BCa moves the interval right of percentile
    s = StatsSettings(resamples=20000, seed=0, method="bca")
    ours = metric_intervals({"m": x}, s)["m"]
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="BCa", random_state=0).confidence_interval
    assert ours["low"] == pytest.approx(100 * ref.low, rel=0.02)
    assert ours["high"] == pytest.approx(100 * ref.high, rel=0.02)
    perc = metric_intervals({"m": x}, StatsSettings(resamples=20000, seed=0))["m"]
    assert ours["high"] > perc["high"]


def test_jackknife_closed_form():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    member = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=bool)
    jk = jackknife_means(x[:, None], member)[:, 0, :]
    np.testing.assert_allclose(jk[0], [(2 + 8) / 2, (4 + 8) / 2])
    np.testing.assert_allclose(jk[2], [(1 + 2 + 8) / 3, 8.0])
    np.testing.assert_allclose(jk[3], [1.5, 4.0])
    np.testing.assert_allclose(jackknife_means(x[:, None])[:, 0, 0], [14 / 3, 13 / 3, 11 / 3, 7 / 3])


def test_degenerate_scores_give_a_point_interval():
    out = metric_intervals({"ACC@5": np.ones(30)}, StatsSettings(resamples=500))
    assert out["ACC@5"]["low"] == out["ACC@5"]["high"] == 100.0


def test_coverage_of_95_percent_intervals_is_nominal():
    """Over 400 synthetic samples, the 95 % percentile interval holds the true mean about 95 % of the time."""
    rng = np.random.default_rng(2024)
    true_p, hits, draws = 0.3, 0, 400
    s = StatsSettings(resamples=1000, seed=0)
    for i in range(draws):
        x = (rng.random(300) < true_p).astype(float)
        lo, hi = interval(x.mean(), resampled_means(x[:, None], StatsSettings(resamples=1000, seed=i))[:, 0, 0], s)
        hits += lo <= true_p <= hi
    assert 0.92 <= hits / draws <= 0.98


def test_macro_interval_brackets_the_macro_mean():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], [200, 50, 10])
    x = (rng.random(260) < np.array([0.9, 0.5, 0.2])[labels]).astype(float)
    member = labels[:, None] == np.arange(3)[None, :]
    out = metric_intervals({"P@5": x}, StatsSettings(resamples=2000), member)
    macro = np.mean([x[labels == c].mean() for c in range(3)]) * 100
    assert out["P@5_macro"]["low"] < macro < out["P@5_macro"]["high"]
    # the macro interval is wider: the 10-query class weighs a third
    width = {n: out[n]["high"] - out[n]["low"] for n in out}
    assert width["P@5_macro"] > width["P@5"]


def test_sign_flip_matches_scipy_permutation_test():
    rng = np.random.default_rng(5)
    d = rng.normal(0.15, 1, size=80)
    s = StatsSettings(resamples=20000, seed=0)
    ours = sign_flip_pvalues(d[:, None], np.full(80, 1 / 80), s)[0]
    ref = sps.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=20000, vectorized=True, random_state=0
    ).pvalue
    assert ours == pytest.approx(ref, abs=0.015)


def test_sign_flip_counts_ties_of_discrete_scores():
    """Hits (0/1) tie often: |T*| = |T| must count as extreme, in the pairwise and the one-sample path alike.

    d = a - b has five +1, one -1 and six 0: exactly, P(|Σ s d| >= 4) = 2 (1 + 6) / 64, of which 12/64 are ties.
    """
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0], dtype=float)
    b = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0], dtype=float)
    s = StatsSettings(resamples=20000, seed=3, correction="none")
    exact = 14 / 64
    pair = compare_models({"a": {"ACC@1": a}, "b": {"ACC@1": b}}, [("a", "b")], s).comparisons[0]
    assert pair.p_value == pytest.approx(exact, abs=0.01)
    assert sign_flip_pvalues((a - b)[:, None], np.full(12, 1 / 12), s)[0] == pytest.approx(exact, abs=0.01)


def test_paired_test_small_for_a_real_shift_not_under_the_null():
    rng = np.random.default_rng(11)
    base = rng.random(500)
    shifted = np.clip(base + 0.05 + rng.normal(0, 0.05, 500), 0, 1)
    same = base + rng.normal(0, 0.05, 500)  # noise only: the null holds
    scores = {"a": {"m": shifted}, "b": {"m": base}, "c": {"m": same}}
    s = StatsSettings(resamples=5000, seed=0, correction="none")
    out = {(c.a, c.b): c for c in compare_models(scores, [("a", "b"), ("c", "b")], s).comparisons}
    real, null = out[("a", "b")], out[("c", "b")]
    assert real.p_value < 0.001 and real.low > 0 and real.difference == pytest.approx(100 * (shifted - base).mean())
    assert null.p_value > 0.05 and null.low < 0 < null.high
    wilcoxon = compare_models(scores, [("a", "b"), ("c", "b")], StatsSettings(test="wilcoxon", resamples=500))
    wilcoxon = wilcoxon.comparisons
    assert wilcoxon[0].p_value < 0.001 and wilcoxon[1].p_value > 0.05 and wilcoxon[0].test == "wilcoxon"


def test_paired_null_p_values_are_roughly_uniform():
    rng = np.random.default_rng(0)
    p = [
        sign_flip_pvalues(rng.normal(size=(60, 1)), np.ones(60), StatsSettings(resamples=500, seed=i))[0]
        for i in range(200)
    ]
    assert 0.02 <= np.mean(np.array(p) < 0.05) <= 0.09


def test_paired_interval_uses_the_cells_resamples():
    """A model's resampled means in a joint comparison are the very resamples of its own cell's interval."""
    rng = np.random.default_rng(4)
    a, b = rng.random(100), rng.random(100)
    s = StatsSettings(resamples=1000, seed=2)
    joint = resampled_means(np.stack([a, b], 1), s)[:, :, 0]
    # the same draws; only the matrix product's summation order may differ in the last bit
    np.testing.assert_allclose(joint[:, 0], resampled_means(a[:, None], s)[:, 0, 0], rtol=1e-13)
    column = compare_models({"a": {"m": a}, "b": {"m": b}}, [("a", "b")], s)
    comp = column.comparisons[0]
    assert column.intervals["a"]["m"] == pytest.approx(metric_intervals({"m": a}, s)["m"])
    lo, hi = np.quantile(joint[:, 0] - joint[:, 1], [0.025, 0.975])
    assert (comp.low, comp.high) == pytest.approx((100 * lo, 100 * hi))


def test_paired_macro_comparison():
    labels = np.repeat([0, 1], [90, 10])
    member = labels[:, None] == np.arange(2)[None, :]
    a = np.where(labels == 1, 1.0, 0.5)
    b = np.full(100, 0.5)
    column = compare_models({"a": {"m": a}, "b": {"m": b}}, [("a", "b")], StatsSettings(resamples=1000), member)
    by_name = {c.metric: c for c in column.comparisons}
    assert column.intervals["a"]["m_macro"] == pytest.approx(
        metric_intervals({"m": a}, StatsSettings(resamples=1000), member)["m_macro"]
    )
    assert by_name["m"].difference == pytest.approx(5.0) and by_name["m_macro"].difference == pytest.approx(25.0)


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    from statsmodels.stats.multitest import multipletests

    q = np.random.default_rng(0).random(12) ** 3
    np.testing.assert_allclose(holm(q), multipletests(q, method="holm")[1])
    np.testing.assert_allclose(adjust_pvalues(q, "bh"), multipletests(q, method="fdr_bh")[1])
    np.testing.assert_allclose(adjust_pvalues(q, "none"), q)


def test_critical_difference_matches_demsar_table():
    # Demšar (2006), Table 5(a): q_0.05 = 2.569 for k = 4, 3.102 for k = 9
    assert critical_difference(4, 1) == pytest.approx(2.569 * np.sqrt(4 * 5 / 6), abs=1e-3)
    assert critical_difference(9, 28) == pytest.approx(3.102 * np.sqrt(9 * 10 / (6 * 28)), abs=1e-3)


def test_friedman_nemenyi_and_cd_diagram(tmp_path):
    rng = np.random.default_rng(0)
    # 12 datasets, 4 models: A clearly best, D clearly worst, B and C alike
    table = np.stack([0.9 + 0.01 * rng.random(12), 0.7 + 0.05 * rng.random(12), 0.7 + 0.05 * rng.random(12)], 1)
    table = np.concatenate([table, 0.5 + 0.01 * rng.random((12, 1))], axis=1)
    analysis = rank_models(table, ["A", "B", "C", "D"])
    assert analysis.average_ranks["A"] == 1.0 and analysis.average_ranks["D"] == 4.0
    assert analysis.average_ranks["B"] + analysis.average_ranks["C"] == pytest.approx(5.0)
    assert analysis.friedman_p < 1e-4
    assert analysis.friedman_statistic == pytest.approx(sps.friedmanchisquare(*table.T).statistic)
    p = analysis.nemenyi_p
    assert p[0, 3] < 0.05 and p[1, 2] > 0.05 and np.allclose(p, p.T)
    png = draw_cd_diagram(analysis, tmp_path / "cd.png", title="mAP@5")
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[1] > 400
    with pytest.raises(ValueError, match="every model"):
        rank_models(np.where(np.eye(4, 4, dtype=bool), np.nan, table[:4]), ["A", "B", "C", "D"])
