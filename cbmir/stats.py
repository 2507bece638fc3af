"""Uncertainty over queries: bootstrap intervals, paired model comparisons and multiple-testing corrections.

Every statistic here is a mean of per-query scores (:func:`cbmir.metrics.per_query_scores`), or
a macro average of per-class means, so one engine serves 2D and 3D, single- and multi-label,
and every metric: resampling queries with replacement is a ``(B, Q)`` matrix of counts, and
the resampled means of all metrics (and all models scored on the same queries) are one matrix
product with it. Paired differences then come from the same resamples for free.

* Interval (``method``): percentile (Efron & Tibshirani 1993) or BCa (Efron 1987), with the
  jackknife acceleration in closed form for means. Deterministic for ``seed``: the counts
  depend only on (seed, number of queries, resamples), so a cell's interval and the same
  model's interval in a joint comparison of its column come from the same resamples.
* Paired test (``test``): sign-flip permutation test of the mean per-query difference
  (the ``permutation_type="samples"`` test of :func:`scipy.stats.permutation_test`, Monte
  Carlo with ``resamples`` flips, p = (1 + #{|T*| ≥ |T|}) / (1 + B)), or Wilcoxon's
  signed-rank test (:func:`scipy.stats.wilcoxon`, micro averages only).
* Correction (``correction``): Holm (1979) step-down by default, Benjamini–Hochberg via
  :func:`scipy.stats.false_discovery_control`, or none; applied within each metric over the
  comparisons of one call (one table).

A class that a resample happens to miss is left out of that resample's macro average.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from cbmir.errors import ConfigError

METHODS = ("percentile", "bca")
TESTS = ("signflip", "wilcoxon")
CORRECTIONS = ("holm", "bh", "none")
#: Elements of one chunk of the (resamples, queries) count matrix: bounds memory (~32 MB as float64).
_CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class StatsSettings:
    """``conf/stats/default.yaml``: the bootstrap, the paired test and the cell's diagnostics."""

    level: float = 0.95
    resamples: int = 10_000
    seed: int = 0
    method: str = "percentile"
    test: str = "signflip"
    correction: str = "holm"
    #: leakage audit: a query is a near-duplicate when ||q - x|| <= tolerance * ||q|| for its nearest x
    leak_tolerance: float = 1e-4
    #: hubness: how many of the most frequent neighbours to name
    top_hubs: int = 10

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> StatsSettings:
        """Validated settings; a bad value raises :class:`ConfigError` before any work starts."""
        values = {**asdict(cls()), **dict(node or {})}
        unknown = set(values) - set(asdict(cls()))
        if unknown:
            raise ConfigError(f"stats has unknown keys {sorted(unknown)}")
        if not isinstance(values["level"], float) or not 0 < values["level"] < 1:
            raise ConfigError(f"stats.level must be a probability between 0 and 1, got {values['level']!r}")
        for key, low in (("resamples", 100), ("seed", 0), ("top_hubs", 0)):
            if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < low:
                raise ConfigError(f"stats.{key} must be an integer >= {low}, got {values[key]!r}")
        for key, allowed in (("method", METHODS), ("test", TESTS), ("correction", CORRECTIONS)):
            if values[key] not in allowed:
                raise ConfigError(f"stats.{key} must be one of {list(allowed)}, got {values[key]!r}")
        if not isinstance(values["leak_tolerance"], int | float) or values["leak_tolerance"] < 0:
            raise ConfigError(f"stats.leak_tolerance must be a number >= 0, got {values['leak_tolerance']!r}")
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        return {"level": self.level, "method": self.method, "resamples": self.resamples, "seed": self.seed}


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``(b, n)`` float64 counts of each query in each bootstrap resample, in chunks; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    step = max(1, min(resamples, _CHUNK_ELEMENTS // max(n, 1)))
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _membership(n: int, membership: np.ndarray | None) -> np.ndarray:
    return np.ones((n, 1)) if membership is None else np.asarray(membership, dtype=np.float64)


def resampled_means(values: np.ndarray, settings: StatsSettings, membership: np.ndarray | None = None) -> np.ndarray:
    """``(B, M, G)`` means of each column of ``values (Q, M)`` over each group's queries, per resample.

    Without ``membership`` there is one group, all queries. A group that a resample misses is NaN.
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    q, m = values.shape
    member = _membership(q, membership)
    g = member.shape[1]
    weighted = (values[:, :, None] * member[:, None, :]).reshape(q, m * g)
    out = np.empty((settings.resamples, m, g))
    start = 0
    for counts in resample_counts(q, settings.resamples, settings.seed):
        b = len(counts)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + b] = (counts @ weighted).reshape(b, m, g) / (counts @ member)[:, None, :]
        start += b
    return out


def jackknife_means(values: np.ndarray, membership: np.ndarray | None = None) -> np.ndarray:
    """``(Q, M, G)`` leave-one-query-out group means (NaN where the group would be empty), in closed form."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    member = _membership(len(values), membership)
    sums, sizes = values.T @ member, member.sum(0)  # (M, G), (G,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[None] - values[:, :, None] * member[:, None, :]) / (sizes[None] - member)[:, None, :]


def interval(observed: float, boot: np.ndarray, settings: StatsSettings, jackknife: np.ndarray | None = None):
    """``(low, high)`` at ``settings.level`` from a bootstrap distribution (NaNs ignored)."""
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    alpha = (1 - settings.level) / 2
    if len(boot) == 0:
        return float("nan"), float("nan")
    if np.ptp(boot) == 0:
        return float(boot[0]), float(boot[0])
    quantiles = np.array([alpha, 1 - alpha])
    if settings.method == "bca":
        if jackknife is None:
            raise ValueError("BCa needs the jackknife values of the statistic")
        below = (boot < observed).mean() + 0.5 * (boot == observed).mean()
        z0 = sps.norm.ppf(np.clip(below, 1 / (len(boot) + 1), len(boot) / (len(boot) + 1)))
        jk = np.asarray(jackknife, dtype=np.float64)
        jk = jk[np.isfinite(jk)]
        dev = jk.mean() - jk
        denom = 6 * (dev**2).sum() ** 1.5
        a = (dev**3).sum() / denom if denom > 0 else 0.0
        z = sps.norm.ppf(quantiles)
        quantiles = sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    low, high = np.quantile(boot, quantiles)
    return float(low), float(high)


def _macro(group_means: np.ndarray) -> np.ndarray:
    """Mean over the last axis, leaving out NaN (missing) groups."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(group_means, axis=-1)


def _interval_record(observed: float, boot, jack, settings: StatsSettings) -> dict[str, Any]:
    low, high = interval(observed, boot, settings, jack)
    return {"low": 100 * low, "high": 100 * high, **settings.describe()}


def metric_intervals(
    scores: Mapping[str, np.ndarray], settings: StatsSettings, membership: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """``{metric: {low, high, level, method, resamples, seed}}`` in percent; with ``membership``, ``_macro`` too."""
    return compare_models({"": scores}, [], settings, membership).intervals[""]


@dataclass(frozen=True)
class Comparison:
    """One paired comparison on the same queries: ``a - b`` in percentage points."""

    metric: str
    a: str
    b: str
    difference: float
    low: float
    high: float
    p_value: float
    p_adjusted: float
    test: str
    correction: str
    level: float
    method: str
    resamples: int
    seed: int


def sign_flip_pvalues(differences: np.ndarray, weights: np.ndarray, settings: StatsSettings) -> np.ndarray:
    """Two-sided Monte Carlo sign-flip p-values of T = Σ_q w_q d_q, one per column of ``differences (Q, P)``."""
    d = np.asarray(differences, dtype=np.float64).reshape(len(differences), -1) * np.asarray(weights)[:, None]
    observed = np.abs(d.sum(0))
    tol = 1e-12 * np.maximum(np.abs(d).sum(0), 1e-300)
    rng = np.random.default_rng([settings.seed, 1])
    exceed = np.zeros(d.shape[1])
    step = max(1, min(settings.resamples, _CHUNK_ELEMENTS // max(len(d), 1)))
    for start in range(0, settings.resamples, step):
        b = min(step, settings.resamples - start)
        signs = rng.integers(0, 2, size=(b, len(d))) * 2.0 - 1.0
        exceed += (np.abs(signs @ d) >= observed - tol).sum(0)
    return (1 + exceed) / (1 + settings.resamples)


def wilcoxon_pvalue(differences: np.ndarray) -> float:
    """Wilcoxon signed-rank p-value (Pratt's handling of zero differences); 1 when all differences are 0."""
    d = np.asarray(differences, dtype=np.float64)
    if not np.any(d):
        return 1.0
    return float(sps.wilcoxon(d, zero_method="pratt").pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values: the i-th smallest times (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def adjust_pvalues(pvalues: Sequence[float], correction: str = "holm") -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if correction == "none" or len(p) == 0:
        return p.copy()
    return holm(p) if correction == "holm" else sps.false_discovery_control(p, method="bh")


@dataclass(frozen=True)
class ColumnStatistics:
    """Models scored on the same queries: each one's intervals and the paired comparisons between them."""

    intervals: dict[str, dict[str, dict[str, Any]]]  # model -> metric -> {low, high, level, method, ...}
    comparisons: list[Comparison]


def compare_models(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    pairs: Sequence[tuple[str, str]],
    settings: StatsSettings,
    membership: np.ndarray | None = None,
) -> ColumnStatistics:
    """Intervals and paired comparisons of models scored on the same queries (``scores[model][metric]``, (Q,)).

    One bootstrap pass serves every model, metric and pair: the intervals equal each cell's own
    (same seed, same queries), and each pair's difference a - b gets a paired-bootstrap interval
    and a paired test's p-value, corrected over the pairs of each metric. With ``membership``,
    every metric is also compared as its macro average (``<metric>_macro``).
    """
    models = list(scores)
    metrics = list(next(iter(scores.values())))
    values = np.stack([np.asarray(scores[m][n], dtype=np.float64) for n in metrics for m in models], axis=1)
    q, shape = len(values), (len(metrics), len(models))
    groups = np.ones((q, 1)) if membership is None else np.concatenate([np.ones((q, 1)), membership], axis=1)
    boot_groups = resampled_means(values, settings, groups)  # (B, metrics * models, 1 + classes)
    jack_groups = jackknife_means(values, groups) if settings.method == "bca" else None
    member = _membership(q, groups)
    observed_groups = (values.T @ member) / member.sum(0)
    views = [("", slice(0, 1))] + ([("_macro", slice(1, None))] if membership is not None else [])
    col = {m: j for j, m in enumerate(models)}
    a_idx, b_idx = np.array([col[a] for a, _ in pairs], dtype=int), np.array([col[b] for _, b in pairs], dtype=int)
    intervals: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in models}
    comparisons: list[Comparison] = []
    for suffix, sel in views:
        boot = _macro(boot_groups[:, :, sel]).reshape(-1, *shape)
        jack = None if jack_groups is None else _macro(jack_groups[:, :, sel]).reshape(q, *shape)
        observed = observed_groups[:, sel].mean(1).reshape(shape)
        w = member[:, sel] / member[:, sel].sum(0)
        weights = w.sum(1) / w.shape[1]  # Σ_q w_q d_q is the (macro) mean difference
        diffs = values.reshape(q, *shape)[:, :, a_idx] - values.reshape(q, *shape)[:, :, b_idx]  # (Q, metrics, P)
        use_wilcoxon = settings.test == "wilcoxon" and not suffix
        if not pairs:
            p = np.empty((len(metrics), 0))
        elif use_wilcoxon:
            p = np.array([[wilcoxon_pvalue(diffs[:, i, j]) for j in range(len(pairs))] for i in range(len(metrics))])
        else:
            p = sign_flip_pvalues(diffs.reshape(q, -1), weights, settings).reshape(len(metrics), len(pairs))
        for i, metric in enumerate(metrics):
            name = metric + suffix
            for j, model in enumerate(models):
                jk = None if jack is None else jack[:, i, j]
                intervals[model][name] = _interval_record(observed[i, j], boot[:, i, j], jk, settings)
            p_adj = adjust_pvalues(p[i], settings.correction)
            for j, (a, b) in enumerate(pairs):
                ia, ib = col[a], col[b]
                jk = None if jack is None else jack[:, i, ia] - jack[:, i, ib]
                diff = observed[i, ia] - observed[i, ib]
                low, high = interval(diff, boot[:, i, ia] - boot[:, i, ib], settings, jk)
                comparisons.append(
                    Comparison(
                        metric=name,
                        a=a,
                        b=b,
                        difference=float(100 * diff),
                        low=100 * low,
                        high=100 * high,
                        p_value=float(p[i, j]),
                        p_adjusted=float(p_adj[j]),
                        test="wilcoxon" if use_wilcoxon else "signflip",
                        correction=settings.correction,
                        **settings.describe(),
                    )
                )
    return ColumnStatistics(intervals, comparisons)
