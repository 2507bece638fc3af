"""Uncertainty over queries: bootstrap intervals, paired model comparisons and multiple-testing corrections.

Every statistic here is a mean of per-query scores (:func:`cbmir.metrics.retrieval.per_query_scores`), or
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
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cbmir.errors import ConfigError

METHODS = ("percentile", "bca")
TESTS = ("signflip", "wilcoxon")
CORRECTIONS = ("holm", "bh", "none")
#: Elements of one chunk of the (resamples, queries) count matrix: bounds memory (~32 MB as float64).
_CHUNK_ELEMENTS = 2**22
#: Counts kept for reuse by the next call on the same queries (one byte each: 128 MiB at most).
_CACHE_ELEMENTS = 2**27


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


def chunk_rows(n: int, resamples: int) -> int:
    return max(1, min(resamples, _CHUNK_ELEMENTS // max(n, 1)))


def _draw_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``(b, n)`` int64 counts per chunk: row r holds the bincount of ``rng.integers(0, n, n)``, the r-th resample."""
    rng = np.random.default_rng(seed)
    step = chunk_rows(n, resamples)
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
    stored, step = _stored_counts(n, resamples, seed), chunk_rows(n, resamples)
    for start in range(0, resamples, step):
        yield stored[start : start + step].astype(np.float64)


def membership_matrix(n: int, membership: np.ndarray | None) -> np.ndarray:
    return np.ones((n, 1)) if membership is None else np.asarray(membership, dtype=np.float64)


def resampled_means(values: np.ndarray, settings: StatsSettings, membership: np.ndarray | None = None) -> np.ndarray:
    """``(B, M, G)`` means of each column of ``values (Q, M)`` over each group's queries, per resample.

    Without ``membership`` there is one group, all queries. A group that a resample misses is NaN.
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    q, m = values.shape
    member = membership_matrix(q, membership)
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
    member = membership_matrix(len(values), membership)
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
        from scipy import stats as sps  # imported here: validating a config must stay light

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


def macro_means(group_means: np.ndarray) -> np.ndarray:
    """Mean over the last axis, leaving out NaN (missing) groups."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(group_means, axis=-1)


def interval_record(low: float, high: float, settings: StatsSettings) -> dict[str, Any]:
    return {"low": 100 * float(low), "high": 100 * float(high), **settings.describe()}
