"""Paired rounds: the compared paths back to back in rotating order, a ratio per round, its median and 95 % interval.

A ratio of two medians of sequential runs mixes the machine's drift into the figure; a ratio taken inside one
round sees the same load on both sides, and the median of many such ratios, with a distribution-free interval
(order statistics of the binomial, ``scipy.stats.quantile_test``: exact, no resampling, no normality), says how
far it can be trusted. Rounds continue until every interval is narrow enough or the time budget is spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Ratio:
    """``key`` = seconds[slow] / seconds[fast] per round: how many times the ``fast`` path's rate is the ``slow``'s.

    Both paths must time the same work (a path timed on a subset scales its seconds to the whole first).
    """

    key: str
    fast: str
    slow: str


@dataclass(frozen=True)
class Budget:
    """When rounds stop: once every interval's relative half-width is at most ``precision`` (after ``min_rounds``),
    or once ``seconds`` of wall time are spent (after ``min_rounds``, or fewer but at least one rotation of the
    paths: the budget is kept on a busy machine, and the figure then says it has no interval), or at ``max_rounds``."""

    min_rounds: int
    max_rounds: int
    seconds: float
    precision: float = 0.03

    def check(self) -> None:
        if not (1 <= self.min_rounds <= self.max_rounds) or self.seconds <= 0 or not 0 < self.precision < 1:
            raise ValueError(f"rounds need 1 <= min_rounds <= max_rounds, seconds > 0, 0 < precision < 1: {self}")


def quantile_ci(xs: Sequence[float], p: float = 0.5, confidence: float = CONFIDENCE) -> list[float] | None:
    """The ``confidence`` interval of the ``p`` quantile from order statistics; None when too few samples give one."""
    from scipy.stats import quantile_test

    x = np.asarray(xs, dtype=float)
    if len(x) < 2:
        return None
    ci = quantile_test(x, q=float(np.quantile(x, p)), p=p).confidence_interval(confidence)
    lo, hi = float(ci.low), float(ci.high)
    return [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None


def rel_halfwidth(value: float, ci: list[float] | None) -> float:
    """Half the interval's width over the figure (inf without an interval)."""
    if ci is None or not value:
        return math.inf
    return (ci[1] - ci[0]) / 2 / abs(value)


def rel_noise(xs: Sequence[float]) -> float:
    """Interquartile range over the median: how much a single round moves."""
    q1, q2, q3 = np.quantile(np.asarray(xs, dtype=float), [0.25, 0.5, 0.75])
    return float((q3 - q1) / q2) if q2 else math.inf


def summary(xs: Sequence[float], precision: float, p: float = 0.5) -> dict[str, Any]:
    """Median (or ``p`` quantile), its interval, relative half-width, noise, and whether it is ``precision``-tight."""
    value = float(np.quantile(np.asarray(xs, dtype=float), p))
    ci = quantile_ci(xs, p)
    hw = rel_halfwidth(value, ci)
    return {
        "value": value,
        "ci": ci,
        "rel_halfwidth": hw if math.isfinite(hw) else None,
        "noise": rel_noise(xs),
        "converged": hw <= precision,
    }


def run_rounds(
    paths: dict[str, Callable[[], float]],
    ratios: Sequence[Ratio],
    budget: Budget,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Run every path once per round, round ``r`` starting with path ``r mod len(paths)``, until ``budget`` says stop.

    Each path returns its own measured seconds. The result holds every path's per-round seconds, every ratio's
    per-round samples and summary, the number of rounds and why they stopped (``converged``, ``budget``,
    ``max_rounds``).
    """
    budget.check()
    names = list(paths)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    samples: dict[str, list[float]] = {r.key: [] for r in ratios}
    start = clock()
    stop = "max_rounds"
    for r in range(budget.max_rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(float(paths[name]()))
        for ratio in ratios:
            samples[ratio.key].append(seconds[ratio.slow][-1] / seconds[ratio.fast][-1])
        done = r + 1
        if done >= budget.min_rounds and all(summary(v, budget.precision)["converged"] for v in samples.values()):
            stop = "converged"
            break
        # the budget is a hard stop once every path has led a round (on a busy machine: few rounds, no interval)
        if clock() - start >= budget.seconds and done >= min(budget.min_rounds, len(names)):
            stop = "budget"
            break
    return {
        "rounds": len(next(iter(seconds.values()))),
        "stop": stop,
        "wall_s": clock() - start,
        "seconds": seconds,
        "samples": samples,
        "ratios": {key: summary(v, budget.precision) for key, v in samples.items()},
    }


def judge(ci: list[float] | None, target: float, *, higher_is_better: bool = True) -> str:
    """``met`` when the whole interval clears the target, ``missed`` when it is wholly on the wrong side, else
    ``not resolved`` (also without an interval)."""
    if ci is None:
        return "not resolved"
    lo, hi = ci
    if higher_is_better:
        return "met" if lo >= target else "missed" if hi < target else "not resolved"
    return "met" if hi <= target else "missed" if lo > target else "not resolved"


def instability(
    ratios: dict[str, dict[str, Any]], targets: dict[str, float], *, rounds: int, stop: str, precision: float
) -> list[str]:
    """Why a section's figures cannot be read as a clean pass or miss (empty: stable)."""
    reasons = []
    for key, s in ratios.items():
        ci = s["ci"]
        if ci is None:
            reasons.append(f"{key}: no 95 % interval from {rounds} rounds")
            continue
        if not s["converged"]:
            reasons.append(
                f"{key}: interval ±{s['rel_halfwidth']:.1%} after {rounds} rounds (wanted ±{precision:.0%}; "
                f"stopped: {stop})"
            )
        if key in targets and judge(ci, targets[key]) == "not resolved":
            reasons.append(f"{key}: interval [{ci[0]:.3f}, {ci[1]:.3f}] contains the target {targets[key]:g}")
        if key == "pipeline_efficiency" and ci[0] > 1:
            reasons.append(
                f"pipeline_efficiency above 1 beyond its interval [{ci[0]:.3f}, {ci[1]:.3f}]: the pipeline "
                "cannot outrun its own model; the model-only runs were disturbed"
            )
    return reasons


def figures(
    result: dict[str, Any], *, work: dict[str, float], targets: dict[str, float], precision: float
) -> dict[str, Any]:
    """A section's bench.json keys from :func:`run_rounds`: every ratio ``X`` with ``X_ci``, every path's rate per
    second with its interval (``work[path]`` units per run), rounds, noise, stability and the per-round samples."""
    rates = {name: [work[name] / t for t in ts] for name, ts in result["seconds"].items()}
    out: dict[str, Any] = {}
    for key, s in result["ratios"].items():
        out[key], out[f"{key}_ci"] = s["value"], s["ci"]
    reasons = instability(result["ratios"], targets, rounds=result["rounds"], stop=result["stop"], precision=precision)
    return {
        **out,
        "rate_per_s": {name: float(np.median(v)) for name, v in rates.items()},
        "rate_per_s_ci": {name: quantile_ci(v) for name, v in rates.items()},
        "rounds": result["rounds"],
        "stop": result["stop"],
        "rounds_wall_s": round(result["wall_s"], 2),
        "noise": {key: s["noise"] for key, s in result["ratios"].items()},
        "rel_halfwidth": {key: s["rel_halfwidth"] for key, s in result["ratios"].items()},
        "stable": not reasons,
        "unstable_reasons": reasons,
        "seconds": result["seconds"],
        # what `cbmir bench compare` tests: higher is better for every one of these
        "samples": {**result["samples"], **{f"rate_per_s.{name}": v for name, v in rates.items()}},
    }
