"""Search: FAISS through ``cbmir.search.exact.search`` vs the study's per-query loop (``np.linalg.norm`` + ``argsort``).

The loop is timed on a subset of the queries and scaled linearly: its cost is exactly per query.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from cbmir.bench.common import median
from cbmir.bench.profiles import PATHMNIST, TARGETS, Profile
from cbmir.bench.rounds import Ratio, figures, run_rounds

log = logging.getLogger(__name__)


def bench_search(profile: Profile, *, k: int = 5) -> dict[str, Any]:
    """Both searches on the same random non-negative features (GAP features of ReLU nets are), ranking by L2."""
    from cbmir.search.exact import search

    n_db, n_q, d = profile.search_shape
    m = min(n_q, profile.loop_queries)
    rng = np.random.default_rng(3)
    db = np.abs(rng.standard_normal((n_db, d), dtype=np.float32))
    q = np.abs(rng.standard_normal((n_q, d), dtype=np.float32))
    scaled = (n_db, n_q, d) != (PATHMNIST["database"], PATHMNIST["query"], PATHMNIST["dim"])
    log.info(
        "  search: %d x %d x %d%s; the loop is timed on %d queries and scaled to %d",
        n_db,
        n_q,
        d,
        " (scaled down from PathMNIST 89,996 x 7,180 x 2,048)" if scaled else "",
        m,
        n_q,
    )

    def loop(qs: np.ndarray) -> tuple[float, np.ndarray]:
        out = np.empty((len(qs), k), dtype=np.int64)
        t0 = time.perf_counter()
        for i, qi in enumerate(qs):
            dist = np.linalg.norm(db - qi, axis=1)
            out[i] = np.argsort(dist)[:k]
        return time.perf_counter() - t0, out

    _dist, idx = search(db, q, k, "l2")
    _t, ref = loop(q[:m])
    agree = float((idx[:m, 0] == ref[:, 0]).mean())
    for _ in range(profile.warmup):
        search(db, q[: min(n_q, 64)], k, "l2")
        loop(q[:2])

    def faiss_run() -> float:
        t0 = time.perf_counter()
        search(db, q, k, "l2")
        return time.perf_counter() - t0

    rounds = run_rounds(
        {"faiss": faiss_run, "loop": lambda: loop(q[:m])[0] * n_q / m},  # the loop scaled: its cost is per query
        [Ratio("speedup_search", "faiss", "loop")],
        profile.budget(profile.section_budget_s),
    )
    out = figures(rounds, work=dict.fromkeys(rounds["seconds"], n_q), targets=TARGETS, precision=profile.halfwidth)
    pathmnist_pairs = PATHMNIST["database"] * PATHMNIST["query"]
    tf, tl = median(out["seconds"]["faiss"]), median(out["seconds"]["loop"])
    return {
        "database": n_db,
        "queries": n_q,
        "dim": d,
        "k": k,
        "unit": "queries",
        "scaled_down": scaled,
        "loop_queries_timed": m,
        "top1_agreement": agree,
        "pathmnist_loop_estimate_s": tl / (n_db * n_q) * pathmnist_pairs,
        "pathmnist_faiss_estimate_s": tf / (n_db * n_q) * pathmnist_pairs,
        **out,
    }
