"""Search at scale: build time, queries/s, memory and recall@k of FAISS indexes on synthetic clustered vectors.

The MedMNIST databases are small (at most 166k images), so exact search is never the
bottleneck there; this bench answers what happens at a million vectors. The data are
not uniform noise (on which every index degrades to brute force) but embedding-like:
Gaussian clusters in a low-dimensional latent space, mapped linearly into ``dim``
dimensions, plus isotropic noise. Queries come from the same distribution.

    python -m cbmir.bench.search_scale --n 1000000 --dim 768 --queries 10000 --out bench_search.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cbmir.search.approximate import make_index, recall_at_k

log = logging.getLogger(__name__)

#: (index factory string, search-time parameter settings tried on the one built index)
DEFAULT_SETTINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Flat", ("",)),
    ("IVF2048,Flat", ("nprobe=8", "nprobe=16", "nprobe=32", "nprobe=64")),
    ("HNSW32", ("efSearch=32", "efSearch=64", "efSearch=128", "efSearch=256")),
    ("IVF2048,PQ96", ("nprobe=16", "nprobe=64")),
    ("IVF2048,PQ192", ("nprobe=16", "nprobe=64")),
)


@dataclass
class Row:
    """One (index, search parameters) measurement."""

    index: str
    params: str
    build_s: float
    search_s: float
    queries_per_s: float
    memory_bytes: int
    recall: float
    speedup_vs_flat: float = 0.0
    memory_ratio_vs_flat: float = 0.0


@dataclass
class BenchResult:
    n: int
    dim: int
    n_queries: int
    k: int
    machine: dict
    rows: list[Row] = field(default_factory=list)


def database_and_queries(
    n: int,
    n_queries: int,
    dim: int,
    *,
    n_clusters: int = 1000,
    latent_dim: int = 64,
    noise: float = 0.2,
    seed: int = 0,
    chunk: int = 100_000,
) -> tuple[np.ndarray, np.ndarray]:
    """A database and held-out queries drawn from the same clustered distribution (generated in chunks)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, latent_dim)).astype(np.float32)
    spread = rng.uniform(0.5, 1.0, n_clusters).astype(np.float32)  # clusters of different widths
    weights = rng.dirichlet(np.full(n_clusters, 2.0))  # and different sizes
    projection = (rng.standard_normal((latent_dim, dim)) / np.sqrt(latent_dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, chunk):
            m = min(chunk, count - start)
            members = rng.choice(n_clusters, size=m, p=weights)
            latent = centres[members] + spread[members, None] * rng.standard_normal((m, latent_dim), dtype=np.float32)
            out[start : start + m] = latent @ projection
            out[start : start + m] += noise * rng.standard_normal((m, dim), dtype=np.float32)
        return out

    return draw(n), draw(n_queries)


def index_bytes(index) -> int:
    """The index's size as FAISS serialises it: vectors or codes, ids, graph links, centroids."""
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def machine() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import faiss

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "load_at_start": [round(x, 2) for x in load],
    }


def run_bench(
    n: int = 1_000_000,
    dim: int = 768,
    n_queries: int = 10_000,
    k: int = 10,
    *,
    settings: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_SETTINGS,
    train_size: int = 100_000,
    seed: int = 0,
    n_clusters: int = 1000,
) -> BenchResult:
    """Measure every (index, parameters) setting; the ``Flat`` row is the exact ground truth and the baseline."""
    import faiss

    result = BenchResult(n=n, dim=dim, n_queries=n_queries, k=k, machine=machine())
    t0 = time.perf_counter()
    database, queries = database_and_queries(n, n_queries, dim, n_clusters=n_clusters, seed=seed)
    log.info("generated %d + %d vectors of %d dims in %.1f s", n, n_queries, dim, time.perf_counter() - t0)
    rng = np.random.default_rng(seed + 1)
    train = database[rng.choice(n, size=min(train_size, n), replace=False)] if train_size < n else database
    truth = None
    flat_qps = flat_bytes = None
    for factory, param_sets in settings:
        index = make_index(dim, factory)
        t0 = time.perf_counter()
        if not index.is_trained:
            index.train(train)
        index.add(database)
        build_s = time.perf_counter() - t0
        memory = index_bytes(index)
        log.info("%s: built in %.1f s, %.1f MB", factory, build_s, memory / 1e6)
        space = faiss.ParameterSpace()
        for params in param_sets or ("",):
            if params:
                space.set_index_parameters(index, params)
            t0 = time.perf_counter()
            _, found = index.search(queries, k)
            search_s = time.perf_counter() - t0
            if truth is None:
                if factory != "Flat":
                    raise ValueError("the first setting must be Flat: it gives the ground truth")
                truth = found
                flat_qps, flat_bytes = n_queries / search_s, memory
            row = Row(
                index=factory,
                params=params,
                build_s=round(build_s, 2),
                search_s=round(search_s, 3),
                queries_per_s=round(n_queries / search_s, 1),
                memory_bytes=memory,
                recall=round(recall_at_k(found, truth), 4),
            )
            row.speedup_vs_flat = round(row.queries_per_s / flat_qps, 2)
            row.memory_ratio_vs_flat = round(flat_bytes / memory, 2)
            log.info("%s %s: %.0f q/s (x%.1f), recall@%d %.3f", factory, params, row.queries_per_s,
                     row.speedup_vs_flat, k, row.recall)  # fmt: skip
            result.rows.append(row)
        del index
    return result


def markdown_table(result: BenchResult) -> str:
    lines = [
        f"| index | parameters | build s | queries/s | × Flat | memory MB | ÷ Flat memory | recall@{result.k} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.rows:
        lines.append(
            f"| {r.index} | {r.params or '-'} | {r.build_s:.1f} | {r.queries_per_s:.0f} | {r.speedup_vs_flat:.1f} "
            f"| {r.memory_bytes / 1e6:.0f} | {r.memory_ratio_vs_flat:.1f} | {r.recall:.3f} |"
        )
    return "\n".join(lines)


def targets(result: BenchResult, *, recall: float = 0.95, speedup: float = 10.0, memory: float = 8.0) -> dict:
    """The fastest setting with recall >= ``recall`` at >= ``speedup`` × Flat, and the best-recall setting at
    >= ``memory`` × less memory than Flat (``None`` where no setting reaches the target)."""
    fast = [r for r in result.rows if r.recall >= recall and r.speedup_vs_flat >= speedup]
    small = [r for r in result.rows if r.memory_ratio_vs_flat >= memory]
    return {
        "fast": asdict(max(fast, key=lambda r: r.queries_per_s)) if fast else None,
        "small": asdict(max(small, key=lambda r: r.recall)) if small else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cbmir.bench.search_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run_bench(args.n, args.dim, args.queries, args.k, train_size=args.train_size)
    result.machine["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(markdown_table(result))
    met = targets(result)
    print(json.dumps(met, indent=2))
    if args.out:
        args.out.write_text(json.dumps({**asdict(result), "targets": met}, indent=2))


if __name__ == "__main__":
    main()
