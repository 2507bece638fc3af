"""Paired comparisons of models scored on the same queries: sign-flip or Wilcoxon tests, Holm/BH corrections.

The bootstrap engine is :mod:`cbmir.stats.bootstrap`; here every pair of a column shares its resamples
and its sign flips, so a whole table of comparisons costs one matrix product per metric.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from cbmir.stats.bootstrap import (
    CORRECTIONS,
    StatsSettings,
    chunk_rows,
    interval_record,
    intervals,
    jackknife_means,
    macro_means,
    membership_matrix,
    resampled_means,
)

#: A resampled sign-flip statistic within this fraction of the pair's scale Σ w (|a| + |b|) of the observed one is
#: a tie: far above the rounding of the float64 sums, far below any real gap (ties happen with discrete scores).
_TIE_TOLERANCE = 1e-9


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


def flip_bits(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``(b, n)`` float64 0/1 in chunks, fair random bits (1: keep the sign, 0: flip it); deterministic for a seed.

    Bits come packed from the generator's byte stream (8 per byte): drawing them is not the cost
    of a test. The same flips serve every pair of a column.
    """
    rng = np.random.default_rng([seed, 1])
    step = chunk_rows(n, resamples)
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        packed = np.frombuffer(rng.bytes(b * ((n + 7) // 8)), dtype=np.uint8).reshape(b, -1)
        yield np.unpackbits(packed, axis=1, count=n).astype(np.float64)


def _paired_sign_flip_pvalues(
    values: np.ndarray, weights: np.ndarray, a: np.ndarray, b: np.ndarray | None, settings: StatsSettings
) -> np.ndarray:
    """Sign-flip p-values of T = Σ_q w_q (v_qa - v_qb) for each pair of columns (a[j], b[j]) of ``values (Q, K)``.

    Flipping the signs of the differences is flipping both columns' signs: Σ s_q w_q d_q = F_a - F_b with
    F = S @ (w v), one matrix product over the columns for all pairs (``b`` None: the columns themselves);
    with signs s = 2 bits - 1, F = 2 bits @ (w v) - Σ_q w v.
    """
    wv = np.asarray(values, dtype=np.float64).reshape(len(values), -1) * np.asarray(weights)[:, None]
    d = wv[:, a] - (0 if b is None else wv[:, b])
    observed = np.abs(d.sum(0))
    scale = np.abs(wv[:, a]).sum(0) + (0 if b is None else np.abs(wv[:, b]).sum(0))
    threshold = observed - _TIE_TOLERANCE * np.maximum(scale, 1e-300)
    exceed = np.zeros(len(observed))
    total = wv.sum(0)
    for bits in flip_bits(len(wv), settings.resamples, settings.seed):
        flipped = 2 * (bits @ wv) - total
        stat = flipped[:, a] - (0 if b is None else flipped[:, b])
        exceed += (np.abs(stat) >= threshold).sum(0)
    return (1 + exceed) / (1 + settings.resamples)


def sign_flip_pvalues(differences: np.ndarray, weights: np.ndarray, settings: StatsSettings) -> np.ndarray:
    """Two-sided Monte Carlo sign-flip p-values of T = Σ_q w_q d_q, one per column of ``differences (Q, P)``."""
    d = np.asarray(differences, dtype=np.float64).reshape(len(differences), -1)
    return _paired_sign_flip_pvalues(d, weights, np.arange(d.shape[1]), None, settings)


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
    member = membership_matrix(q, groups)
    observed_groups = (values.T @ member) / member.sum(0)
    views = [("", slice(0, 1))] + ([("_macro", slice(1, None))] if membership is not None else [])
    col = {m: j for j, m in enumerate(models)}
    columns = np.arange(values.shape[1]).reshape(shape)  # values' column of (metric, model)
    pa = columns[:, [col[a] for a, _ in pairs]].ravel()  # (metrics * pairs,): metric-major, like p below
    pb = columns[:, [col[b] for _, b in pairs]].ravel()
    per_model: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in models}
    comparisons: list[Comparison] = []
    for suffix, sel in views:
        boot = macro_means(boot_groups[:, :, sel])  # (B, metrics * models)
        jack = None if jack_groups is None else macro_means(jack_groups[:, :, sel])
        observed = observed_groups[:, sel].mean(1)
        w = member[:, sel] / member[:, sel].sum(0)
        weights = w.sum(1) / w.shape[1]  # Σ_q w_q d_q is the (macro) mean difference
        use_wilcoxon = settings.test == "wilcoxon" and not suffix
        if not pairs:
            p = np.empty((len(metrics), 0))
        elif use_wilcoxon:
            p = np.array([wilcoxon_pvalue(values[:, i] - values[:, j]) for i, j in zip(pa, pb, strict=True)])
        else:
            p = _paired_sign_flip_pvalues(values, weights, pa, pb, settings)
        p = p.reshape(len(metrics), len(pairs))
        low, high = (x.reshape(shape) for x in intervals(observed, boot, settings, jack))
        jk = None if jack is None else jack[:, pa] - jack[:, pb]
        diff_bounds = intervals(observed[pa] - observed[pb], boot[:, pa] - boot[:, pb], settings, jk)
        diff_low, diff_high = (x.reshape(p.shape) for x in diff_bounds)
        observed = observed.reshape(shape)
        for i, metric in enumerate(metrics):
            name = metric + suffix
            for j, model in enumerate(models):
                per_model[model][name] = interval_record(low[i, j], high[i, j], settings)
            p_adj = adjust_pvalues(p[i], settings.correction)
            for j, (a, b) in enumerate(pairs):
                comparisons.append(
                    Comparison(
                        metric=name,
                        a=a,
                        b=b,
                        difference=float(100 * (observed[i, col[a]] - observed[i, col[b]])),
                        low=100 * float(diff_low[i, j]),
                        high=100 * float(diff_high[i, j]),
                        p_value=float(p[i, j]),
                        p_adjusted=float(p_adj[j]),
                        test="wilcoxon" if use_wilcoxon else "signflip",
                        correction=settings.correction,
                        **settings.describe(),
                    )
                )
    return ColumnStatistics(per_model, comparisons)


def metric_intervals(
    scores: Mapping[str, np.ndarray], settings: StatsSettings, membership: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """``{metric: {low, high, level, method, resamples, seed}}`` in percent; with ``membership``, macro too.

    One model's case of :func:`compare_models`, so a cell's interval equals its interval in a joint table.
    """
    return compare_models({"": scores}, [], settings, membership).intervals[""]
