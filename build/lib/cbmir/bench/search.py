"""Search: FAISS through ``cbmir.search.exact.search`` vs the study's per-query loop (``np.linalg.norm`` + ``argsort``).

The loop is timed on a subset of the queries and scaled linearly: its cost is exactly per query.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from cbmir.bench.common import median, spread
from cbmir.bench.profiles import PATHMNIST, Profile

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

    for _ in range(profile.warmup):
        search(db, q[: min(n_q, 64)], k, "l2")
        loop(q[:2])
    tf, tl, agree = [], [], None
    for r in range(profile.repeats):
        t0 = time.perf_counter()
        _dist, idx = search(db, q, k, "l2")
        tf.append(time.perf_counter() - t0)
        t, ref = loop(q[:m])
        tl.append(t * n_q / m)
        if r == 0:
            agree = float((idx[:m, 0] == ref[:, 0]).mean())
    speed = [b / a for a, b in zip(tf, tl)]
    pathmnist_pairs = PATHMNIST["database"] * PATHMNIST["query"]
    return {
        "database": n_db,
        "queries": n_q,
        "dim": d,
        "k": k,
        "scaled_down": scaled,
        "loop_queries_timed": m,
        "seconds_faiss": tf,
        "seconds_loop_extrapolated": tl,
        "queries_per_s": {"faiss": n_q / median(tf), "loop": n_q / median(tl)},
        "speedup_search": median(tl) / median(tf),
        "speedup_per_repeat": speed,
        "speedup_spread": spread(speed),
        "top1_agreement": agree,
        "pathmnist_loop_estimate_s": median(tl) / (n_db * n_q) * pathmnist_pairs,
        "pathmnist_faiss_estimate_s": median(tf) / (n_db * n_q) * pathmnist_pairs,
    }
