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

import functools
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
#: Counts kept for reuse by the next call on the same queries (one byte each: 128 MiB at most).
_CACHE_ELEMENTS = 2**27
#: A resampled sign-flip statistic within this fraction of the pair's scale Σ w (|a| + |b|) of the observed one is
#: a tie: far above the rounding of the float64 sums, far below any real gap (ties happen with discrete scores).
_TIE_TOLERANCE = 1e-9


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


def _chunk_rows(n: int, resamples: int) -> int:
    return max(1, min(resamples, _CHUNK_ELEMENTS // max(n, 1)))


def _draw_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``(b, n)`` int64 counts per chunk: row r holds the bincount of ``rng.integers(0, n, n)``, the r-th resample."""
    rng = np.random.default_rng(seed)
    step = _chunk_rows(n, resamples)
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n)


@functools.lru_cache(maxsize=1)
def _stored_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """All ``(resamples, n)`` counts, compact (a count above 255 is never seen in practice, but widens the type).

    Kept for the most recent query set: the columns of a study that share a test split (one dataset
    at several sizes) then draw their resamples once.
    """
    out = np.empty((resamples, n), dtype=np.uint8)
    start = 0
    for chunk in _draw_counts(n, resamples, seed):
        if chunk.max() > np.iinfo(out.dtype).max:
            out = out.astype(np.int64)
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    out.flags.writeable = False
    return out


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``(b, n)`` float64 counts of each query in each bootstrap resample, in chunks; deterministic for a seed.

    The counts depend only on (n, resamples, seed); up to ``_CACHE_ELEMENTS`` of them are drawn
    once and reused by the next call with the same three (every model and metric of a column,
    and the other sizes of the same dataset).
    """
    if n * resamples > _CACHE_ELEMENTS:
        yield from (chunk.astype(np.float64) for chunk in _draw_counts(n, resamples, seed))
        return
    stored, step = _stored_counts(n, resamples, seed), _chunk_rows(n, resamples)
    for start in range(0, resamples, step):
        yield stored[start : start + step].astype(np.float64)


def _membership(n: int, membership: np.ndarray | None) -> np.ndarray:
    return np.ones((n, 1)) if membership is None else np.asarray(membership, dtype=np.float64)


def resampled_means(values: np.ndarray, settings: StatsSettings, membership: np.ndarray | None = None) -> np.ndarray:
    """``(B, M, G)`` means of each column of ``values (Q, M)`` over each group's queries, per resample.

    Without ``membership`` there is one group, all queries. A group that a resample misses is NaN.
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    q, m = values.shape
    member = _membership(q, membership)
    # each group's sums touch only its own queries: Σ_g |g| instead of G·Q per resample (classes partition queries)
    rows = [np.flatnonzero(member[:, j]) for j in range(member.shape[1])]
    weighted = [values[r] * member[r, j, None] for j, r in enumerate(rows)]
    out = np.empty((settings.resamples, m, len(rows)))
    start = 0
    for counts in resample_counts(q, settings.resamples, settings.seed):
        b = len(counts)
        for j, r in enumerate(rows):
            drawn = counts if len(r) == q else counts[:, r]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start : start + b, :, j] = (drawn @ weighted[j]) / (drawn @ member[r, j])[:, None]
        start += b
    return out


def jackknife_means(values: np.ndarray, membership: np.ndarray | None = None) -> np.ndarray:
    """``(Q, M, G)`` leave-one-query-out group means (NaN where the group would be empty), in closed form."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    member = _membership(len(values), membership)
    sums, sizes = values.T @ member, member.sum(0)  # (M, G), (G,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[None] - values[:, :, None] * member[:, None, :]) / (sizes[None] - member)[:, None, :]


def intervals(observed, boot: np.ndarray, settings: StatsSettings, jackknife: np.ndarray | None = None):
    """``(low, high)`` arrays at ``settings.level``, one per column of ``boot (B, K)`` (each column's NaNs ignored).

    ``observed (K,)`` and ``jackknife (Q, K)`` serve BCa. One partition (or sort) of all columns replaces a
    quantile call per column; the quantiles are numpy's default (linear interpolation between order statistics).
    """
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot.reshape(len(boot), -1)
    if len(boot) == 0:
        return np.full(boot.shape[1], np.nan), np.full(boot.shape[1], np.nan)
    finite = np.isfinite(boot)
    n = finite.sum(0)
    alpha = (1 - settings.level) / 2
    quantiles = np.repeat([[alpha], [1 - alpha]], boot.shape[1], axis=1)
    if settings.method == "bca":
        if jackknife is None:
            raise ValueError("BCa needs the jackknife values of the statistic")
        observed = np.broadcast_to(np.asarray(observed, dtype=np.float64).ravel(), n.shape)
        below = ((boot < observed).sum(0) + 0.5 * (boot == observed).sum(0)) / np.maximum(n, 1)
        z0 = sps.norm.ppf(np.clip(below, 1 / (n + 1), n / (n + 1)))
        jk = np.asarray(jackknife, dtype=np.float64)
        jk = jk.reshape(len(jk), -1)
        known = np.isfinite(jk)
        mean = np.where(known, jk, 0).sum(0) / np.maximum(known.sum(0), 1)
        dev = np.where(known, mean - jk, 0)
        denom = 6 * (dev**2).sum(0) ** 1.5
        a = np.where(denom > 0, (dev**3).sum(0) / np.where(denom > 0, denom, 1), 0.0)
        z = sps.norm.ppf(quantiles)
        with np.errstate(divide="ignore", invalid="ignore"):
            quantiles = sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    last = np.maximum(n - 1, 0)
    position = quantiles * last
    below_index = np.clip(np.floor(np.nan_to_num(position)).astype(np.int64), 0, last)
    # NaNs order last, so the first n of a column are its values; a partition places just the order statistics
    # needed (the same few where columns share n and quantiles, as percentile intervals do), else a full sort
    needed = np.unique(np.concatenate([[0], last, below_index.ravel(), np.minimum(below_index + 1, last).ravel()]))
    values = np.where(finite, boot, np.nan)
    ordered = np.partition(values, needed, axis=0) if len(needed) <= 8 else np.sort(values, axis=0)
    lower = np.take_along_axis(ordered, below_index, axis=0)
    upper = np.take_along_axis(ordered, np.minimum(below_index + 1, last), axis=0)
    t = position - below_index
    step = upper - lower
    bounds = np.where(t >= 0.5, upper - step * (1 - t), lower + step * t)  # numpy's lerp, exact at both ends
    constant = ordered[0] == ordered[last, np.arange(len(n))]
    bounds = np.where(constant, ordered[0], bounds)
    bounds = np.where((n > 0) & np.isfinite(quantiles), bounds, np.nan)
    return bounds[0], bounds[1]


def interval(observed: float, boot: np.ndarray, settings: StatsSettings, jackknife: np.ndarray | None = None):
    """``(low, high)`` at ``settings.level`` from a bootstrap distribution (NaNs ignored)."""
    jk = None if jackknife is None else np.asarray(jackknife, dtype=np.float64).reshape(-1, 1)
    low, high = intervals([observed], np.asarray(boot).reshape(-1, 1), settings, jk)
    return float(low[0]), float(high[0])


def _macro(group_means: np.ndarray) -> np.ndarray:
    """Mean over the last axis, leaving out NaN (missing) groups."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(group_means, axis=-1)


def _interval_record(low: float, high: float, settings: StatsSettings) -> dict[str, Any]:
    return {"low": 100 * float(low), "high": 100 * float(high), **settings.describe()}


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


def flip_bits(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``(b, n)`` float64 0/1 in chunks, fair random bits (1: keep the sign, 0: flip it); deterministic for a seed.

    Bits come packed from the generator's byte stream (8 per byte): drawing them is not the cost
    of a test. The same flips serve every pair of a column.
    """
    rng = np.random.default_rng([seed, 1])
    step = _chunk_rows(n, resamples)
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
    member = _membership(q, groups)
    observed_groups = (values.T @ member) / member.sum(0)
    views = [("", slice(0, 1))] + ([("_macro", slice(1, None))] if membership is not None else [])
    col = {m: j for j, m in enumerate(models)}
    columns = np.arange(values.shape[1]).reshape(shape)  # values' column of (metric, model)
    pa = columns[:, [col[a] for a, _ in pairs]].ravel()  # (metrics * pairs,): metric-major, like p below
    pb = columns[:, [col[b] for _, b in pairs]].ravel()
    per_model: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in models}
    comparisons: list[Comparison] = []
    for suffix, sel in views:
        boot = _macro(boot_groups[:, :, sel])  # (B, metrics * models)
        jack = None if jack_groups is None else _macro(jack_groups[:, :, sel])
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
                per_model[model][name] = _interval_record(low[i, j], high[i, j], settings)
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
