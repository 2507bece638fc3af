"""``cbmir bench compare OLD.json NEW.json``: every figure both runs measured, old -> new, and a verdict.

A change counts only when it is statistically significant (Mann-Whitney U on the two runs' stored per-round
samples, ``scipy.stats.mannwhitneyu``) and larger than a minimum effect (``--threshold``, default 5 %, as asv's
``continuous --factor``): run-to-run drift is not reported as a regression. The change's 95 % interval is a
percentile bootstrap of the ratio of the two medians (``scipy.stats.bootstrap``, seeded: the same files always
print the same interval).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.errors import CbmirError

ALPHA = 0.05
#: Run-level facts that make two runs' figures incomparable or explain a change; differences are printed.
BUSY = 0.25  # a run whose sections saw other processes take more of the CPUs than this is flagged as disturbed
CONTEXT = ("device", "device_name", "threads", "precision", "num_workers", "profile", "weights")


def sections(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every part of a bench.json that stores per-round samples, by name (a setting by its label)."""
    out = {s["setting"]: s for s in result.get("settings", [])}
    for name in ("volume_3d", "search", "cache", "serve"):
        if isinstance(result.get(name), dict):
            out[name] = result[name]
    return {name: s for name, s in out.items() if s.get("samples")}


def change_ci(old: np.ndarray, new: np.ndarray, *, seed: int = 0) -> list[float] | None:
    """95 % interval of median(new) / median(old) - 1 (None with fewer than 2 samples a side)."""
    from scipy.stats import bootstrap

    if len(old) < 2 or len(new) < 2:
        return None

    def statistic(o: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(n, axis=axis) / np.median(o, axis=axis) - 1

    res = bootstrap(
        (old, new), statistic, n_resamples=2000, method="percentile", rng=np.random.default_rng(seed), vectorized=True
    )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None


def compare_samples(
    old: list[float], new: list[float], *, threshold: float, lower_is_better: bool = False, alpha: float = ALPHA
) -> dict[str, Any]:
    """Medians, relative change, its interval, the test's p-value and the verdict for one figure."""
    from scipy.stats import mannwhitneyu

    o, n = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    mo, mn = float(np.median(o)), float(np.median(n))
    change = mn / mo - 1 if mo else math.inf
    p = float(mannwhitneyu(o, n, alternative="two-sided").pvalue) if len(o) and len(n) else 1.0
    verdict = "no significant change"
    if p < alpha and abs(change) > threshold:
        better = change < 0 if lower_is_better else change > 0
        verdict = "faster" if better else "slower"
    return {"old": mo, "new": mn, "change": change, "change_ci": change_ci(o, n), "p": p, "verdict": verdict}


def compare(old: dict[str, Any], new: dict[str, Any], *, threshold: float = 0.05) -> list[dict[str, Any]]:
    """One row per (section, figure) that both runs hold samples of."""
    rows = []
    old_sections, new_sections = sections(old), sections(new)
    for name, s_new in new_sections.items():
        s_old = old_sections.get(name)
        if s_old is None:
            continue
        lower = bool(s_new.get("lower_is_better"))
        for figure, samples in s_new["samples"].items():
            if figure in s_old["samples"]:
                row = compare_samples(s_old["samples"][figure], samples, threshold=threshold, lower_is_better=lower)
                rows.append({"section": name, "figure": figure, "lower_is_better": lower, **row})
    return rows


def busiest(result: dict[str, Any]) -> float | None:
    """The largest share of the CPUs other processes took during any section of a run."""
    shares = [d.get("other_cpu_share") for d in result.get("disturbance", {}).values()]
    shares = [s for s in shares if s is not None]
    return max(shares) if shares else None


def context_notes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the runs besides the code (threads, device, ...), each run's commit and load, and a
    warning when other processes took a large share of the CPUs (absolute rates then measure them too)."""
    notes = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in CONTEXT if old.get(k) != new.get(k)]
    for label, r in (("old", old), ("new", new)):
        load = [f"{r[k][0]:.1f}" if r.get(k) else "?" for k in ("load_average_start", "load_average_end")]
        share = busiest(r)
        notes.append(
            f"{label}: commit {r.get('machine', {}).get('commit')}, load average {load[0]} -> {load[1]}, other "
            f"processes took up to {'?' if share is None else f'{share:.0%}'} of the CPUs"
        )
        if share is not None and share > BUSY:
            notes.append(f"warning: the {label} run shared a busy machine: its rates measure the other processes too")
    return notes


def fmt(x: float) -> str:
    return f"{x:.4g}"


def render(rows: list[dict[str, Any]], notes: list[str], threshold: float) -> str:
    lines = [f"cbmir bench compare (a change counts when p < {ALPHA} and larger than {threshold:.0%})", *notes, ""]
    for r in rows:
        ci = f"[{r['change_ci'][0]:+.1%}, {r['change_ci'][1]:+.1%}]" if r["change_ci"] else "[no interval]"
        lines.append(
            f"{r['section']} · {r['figure']}: {fmt(r['old'])} -> {fmt(r['new'])} ({r['change']:+.1%} {ci}, "
            f"p={r['p']:.3g}{', lower is better' if r['lower_is_better'] else ''}): {r['verdict']}"
        )
    if not rows:
        lines.append("no figure is in both runs")
    return "\n".join(lines)


def load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CbmirError(f"{path} cannot be read as a bench.json ({exc})") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbmir bench compare", description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path, help="the baseline bench.json")
    p.add_argument("new", type=Path, help="the bench.json to judge")
    p.add_argument("--threshold", type=float, default=0.05, help="smallest relative change that counts (0.05)")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when any figure got worse")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 0 <= args.threshold < 1:
        print(f"cbmir: error: --threshold is a fraction in [0, 1), got {args.threshold}", file=sys.stderr)
        return 2
    try:
        old, new = load(args.old), load(args.new)
    except CbmirError as exc:
        print(f"cbmir: error: {exc}", file=sys.stderr)
        return 2
    rows = compare(old, new, threshold=args.threshold)
    print(render(rows, context_notes(old, new), args.threshold))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    worse = [r for r in rows if r["verdict"] == "slower"]
    if worse and args.fail_on_regression:
        for r in worse:
            print(f"cbmir: regression: {r['section']} · {r['figure']} ({r['change']:+.1%})", file=sys.stderr)
        return 1
    return 0
