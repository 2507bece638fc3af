"""Models across datasets: Friedman's test, Nemenyi's post-hoc and critical-difference diagrams (Demšar 2006).

Input is a table of one score per (block, model): a block is a dataset (or a dataset at one
size), all models scored on it. Models are ranked within each block (1 = best, ties share
the average rank); Friedman's test asks whether the average ranks differ more than chance
would allow, Nemenyi's post-hoc compares every pair, and two models differ when their
average ranks are further apart than the critical difference
CD = q_α · sqrt(k (k + 1) / (6 N)), q_α the studentized range quantile over √2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class RankAnalysis:
    models: list[str]
    average_ranks: dict[str, float]  # 1 = best
    n_blocks: int
    friedman_statistic: float
    friedman_p: float
    alpha: float
    critical_difference: float
    nemenyi_p: np.ndarray  # (k, k) pairwise p-values, models' order


def critical_difference(n_models: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi's CD for average ranks (Demšar 2006, eq. 5): q_α · sqrt(k (k + 1) / (6 N))."""
    q_alpha = sps.studentized_range.ppf(1 - alpha, n_models, np.inf) / np.sqrt(2)
    return float(q_alpha * np.sqrt(n_models * (n_models + 1) / (6.0 * n_blocks)))


def rank_models(table: np.ndarray, models: list[str], *, alpha: float = 0.05, higher_is_better: bool = True):
    """Friedman + Nemenyi over ``table (blocks, models)``; every model needs a score in every block."""
    import scikit_posthocs

    scores = np.asarray(table, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(models) or len(models) < 3 or len(scores) < 2:
        raise ValueError(f"need a (blocks >= 2, models >= 3) table matching {len(models)} models, got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("every model needs a score on every block (drop incomplete blocks first)")
    ranks = sps.rankdata(-scores if higher_is_better else scores, axis=1)
    friedman = sps.friedmanchisquare(*scores.T)
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(scores).to_numpy()
    return RankAnalysis(
        models=list(models),
        average_ranks={m: float(r) for m, r in zip(models, ranks.mean(0))},
        n_blocks=len(scores),
        friedman_statistic=float(friedman.statistic),
        friedman_p=float(friedman.pvalue),
        alpha=alpha,
        critical_difference=critical_difference(len(models), len(scores), alpha),
        nemenyi_p=nemenyi,
    )


def draw_cd_diagram(analysis: RankAnalysis, path: Path, *, title: str | None = None) -> Path:
    """A critical-difference diagram PNG (scikit-posthocs' drawing): ranks on the axis, bars join ties.

    Drawn on a bare matplotlib Figure (no pyplot): no global backend state, safe in any process.
    """
    import pandas as pd
    import scikit_posthocs
    from matplotlib.figure import Figure

    sig = pd.DataFrame(analysis.nemenyi_p, index=analysis.models, columns=analysis.models)
    fig = Figure(figsize=(8, 0.35 * len(analysis.models) + 1.2))
    ax = fig.subplots()
    scikit_posthocs.critical_difference_diagram(pd.Series(analysis.average_ranks), sig, alpha=analysis.alpha, ax=ax)
    heading = f"average rank over {analysis.n_blocks} blocks · Friedman p = {analysis.friedman_p:.2g}"
    heading += f" · CD = {analysis.critical_difference:.2f}"
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
