"""The search service: a synthetic index behind the real server (``cbmir serve`` on 127.0.0.1),
queried through its HTTP API by one client, then by several at once.

The index is a real one (``cbmir.index.build`` on a small synthetic pathmnist-28 file, the primary setting's
model) padded to ``serve_items`` with Gaussian embeddings of the real ones' mean and spread, as docs/search.md's
latency section built its 100,000-item index. Latency percentiles come with the rounds' interval method: queries
continue until the median's relative half-width is at most the profile's precision, or the budget is spent.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.bench.common import Env, cell_overrides, quiet, write_medmnist_npz
from cbmir.bench.profiles import SERVE_TARGETS, Profile, Setting
from cbmir.bench.rounds import judge, summary

log = logging.getLogger(__name__)

SEED_ITEMS = (64, 16)  # database and query images of the real index that is padded
START_TIMEOUT_S = 300.0  # the server must answer /api/info by then (imports, model, a 1.6 GB FAISS index)
REQUEST_TIMEOUT_S = 120.0
MAX_QUERIES = 5000
#: The words of the text queries (a class of the synthetic pathmnist index; any phrase costs the same).
TEXT_QUERY = "an H&E image of colorectal adenocarcinoma epithelium."


def padded_index(env: Env, setting: Setting, n_items: int, *, batch: int) -> Path:
    """A real index of the setting's model on synthetic images, padded to ``n_items`` synthetic items."""
    from cbmir.index.build import build_index, compose_config
    from cbmir.index.files import open_index
    from cbmir.index.writer import Content, Rows, write_generation
    from cbmir.search.exact import flat_index

    n_db, n_q = SEED_ITEMS
    data_dir = env.work / "serve_data"
    write_medmnist_npz(
        data_dir / "pathmnist.npz",
        {"train": (n_db, 28, 28, 3), "val": (4, 28, 28, 3), "test": (n_q, 28, 28, 3)},
        seed=5,
    )
    extra = [f"index.dir={env.work / 'serve_index'}", "index.images=false", "index.thumb=8"]
    with quiet(not env.verbose):
        folder = build_index(
            compose_config(cell_overrides(env, setting.model, data_dir, env.work / "serve_out", batch) + extra)
        )
    index, n0 = open_index(folder), n_db
    if n_items <= n0:
        return folder
    rng = np.random.default_rng(6)
    real = np.asarray(index.embeddings[:], dtype=np.float32)
    mean, std = real.mean(0), real.std(0)
    synthetic = np.lib.format.open_memmap(
        env.work / "serve_synthetic.npy", mode="w+", dtype=np.float32, shape=(n_items - n0, real.shape[1])
    )
    for start in range(0, len(synthetic), 8192):
        stop = min(len(synthetic), start + 8192)
        synthetic[start:stop] = mean + std * rng.standard_normal((stop - start, real.shape[1]), dtype=np.float32)
    synthetic.flush()
    joint = None
    if index.joint is not None:  # a vision-language model: text queries search unit joint vectors, padded alike
        real_joint = np.asarray(index.joint[:], dtype=np.float32)
        joint = real_joint.mean(0) + real_joint.std(0) * rng.standard_normal(
            (n_items - n0, real_joint.shape[1]), dtype=np.float32
        )
        joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    picks = np.concatenate([np.arange(n0), rng.integers(0, n0, n_items - n0)])  # a synthetic item copies a real one
    items = [
        {**index.items[p], "source": index.items[p]["source"] if i < n0 else f"synthetic-{i}"}
        for i, p in enumerate(picks)
    ]
    manifest = {**index.manifest, "splits": {"train": n_items}, "synthetic_items": n_items - n0}
    content = Content(
        embeddings=[Rows(index.embeddings), Rows(synthetic)],
        labels=index.labels[picks],
        items=[{k: v for k, v in it.items() if k != "row"} for it in items],
        thumbs=[Rows(index.thumbs, picks)],
        images=None,
        probe=np.asarray(index.probe),
        manifest=manifest,
        faiss_index=lambda vectors: flat_index(np.asarray(vectors), manifest["metric"]),
        joint=None if joint is None else [Rows(index.joint), Rows(joint)],
    )
    write_generation(folder, content, keep=1)
    del synthetic
    (env.work / "serve_synthetic.npy").unlink()
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path, device: str) -> tuple[subprocess.Popen, str]:
    """``cbmir serve FOLDER`` on a free loopback port; waits until its API answers."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "cbmir.serve", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--device", device, "--no-verify"]  # the bench built the folder a moment ago
    # every bench client is the same anonymous loopback user: its per-user limits are lifted so that 16 clients
    # stand for 16 users, and the queue holds them all (the workers stay the server's default, one per core)
    cmd += ["--query-rate", "1000000/minute", "--request-rate", "1000000/minute", "--user-queries", "1000"]
    cmd += ["--queue", "1000"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/api/info", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT_S:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def query_png(seed: int = 7) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_query(client, url: str, png: bytes) -> tuple[float, dict[str, float]]:
    """One query through the API: client-side milliseconds and the server's own ``seconds`` parts in ms."""
    t0 = time.perf_counter()
    response = client.post(url + "/api/query", files={"file": ("query.png", png, "image/png")}, data={"k": "5"})
    ms = (time.perf_counter() - t0) * 1000
    response.raise_for_status()
    return ms, {k: v * 1000 for k, v in response.json()["seconds"].items()}


def text_query(client, url: str, words: str) -> float:
    """One query by words through the API: client-side milliseconds."""
    t0 = time.perf_counter()
    response = client.post(url + "/api/query", data={"text": words, "k": "5"})
    ms = (time.perf_counter() - t0) * 1000
    response.raise_for_status()
    return ms


def sample_until(draw: Callable[[], list[float]], budget_s: float, profile: Profile) -> int:
    """Call ``draw`` (one round of samples) until there are ``profile.min_rounds`` samples or more, their median is
    precision-tight and their 95th percentile has an interval, or until the budget is spent. Returns the rounds."""
    start, rounds, samples = time.perf_counter(), 0, []
    while len(samples) < MAX_QUERIES:
        samples += draw()
        rounds += 1
        if len(samples) < profile.min_rounds:
            continue
        tight = summary(samples, profile.halfwidth)["converged"]
        if tight and summary(samples, profile.halfwidth, 0.95)["ci"] is not None:
            break
        if time.perf_counter() - start >= budget_s:
            break
    return rounds


def percentiles(xs: list[float], precision: float) -> dict[str, Any]:
    """``{p50, p95}`` with their 95 % intervals (None where too few samples give one)."""
    p50, p95 = summary(xs, precision), summary(xs, precision, 0.95)
    return {
        "p50": p50["value"],
        "p95": p95["value"],
        "p50_ci": p50["ci"],
        "p95_ci": p95["ci"],
        "p50_rel_halfwidth": p50["rel_halfwidth"],
        "n": len(xs),
    }


def bench_serve(env: Env, setting: Setting, profile: Profile, *, batch: int, n_items: int) -> dict[str, Any]:
    """Warm image query latency (and its embed and search parts), text query latency (a vision-language setting's
    index answers words), 16 concurrent clients."""
    import httpx

    t0 = time.perf_counter()
    folder = padded_index(env, setting, n_items, batch=batch)
    build_s = time.perf_counter() - t0
    log.info("  serve: %d-item index built in %.0f s; starting the server", n_items, build_s)
    png = query_png()
    proc, url = start_server(folder, env.device.type)
    try:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            for _ in range(max(3, profile.warmup)):
                image_query(client, url, png)
            total, parts = [], {"decode": [], "embed": [], "search": []}

            def sequential() -> list[float]:
                ms, server = image_query(client, url, png)
                total.append(ms)
                for name in parts:
                    parts[name].append(server.get(name, float("nan")))
                return [ms]

            rounds = sample_until(sequential, profile.serve_budget_s, profile)
            info = client.get(url + "/api/info").json()
            texts: list[float] = []
            t_rounds = 0
            if info.get("text"):
                for _ in range(max(3, profile.warmup)):
                    text_query(client, url, TEXT_QUERY)

                def by_words() -> list[float]:
                    texts.append(text_query(client, url, TEXT_QUERY))
                    return texts[-1:]

                t_rounds = sample_until(by_words, profile.serve_budget_s, profile)
        overhead = [t - e for t, e in zip(total, parts["embed"])]  # the query's time beyond its embedding

        clients, per_client = profile.serve_clients, profile.serve_client_queries

        def one_client(_i: int) -> list[float]:
            with httpx.Client(timeout=REQUEST_TIMEOUT_S) as c:
                return [image_query(c, url, png)[0] for _ in range(per_client)]

        concurrent: list[float] = []
        with ThreadPoolExecutor(clients) as pool:

            def together() -> list[float]:
                got = [ms for batch_ms in pool.map(one_client, range(clients)) for ms in batch_ms]
                concurrent.extend(got)
                return got

            c_rounds = sample_until(together, profile.serve_budget_s, profile)
    finally:
        stop_server(proc)
        shutil.rmtree(folder, ignore_errors=True)
    image = percentiles(total, profile.halfwidth)
    over = percentiles(overhead, profile.halfwidth)
    conc = percentiles(concurrent, profile.halfwidth)
    return {
        "n_items": n_items,
        "model": setting.model,
        "index_build_s": round(build_s, 1),
        "image_query_ms": image,
        "image_query_parts_ms": {name: percentiles(v, profile.halfwidth) for name, v in parts.items()},
        "image_query_overhead_ms": over,
        "image_query_rounds": rounds,
        "text_query_ms": (
            {**percentiles(texts, profile.halfwidth), "rounds": t_rounds, "query": TEXT_QUERY}
            if texts
            else {"p50": None, "p95": None, "absent": f"{setting.model}: {info.get('text_missing')}"}
        ),
        "concurrent_16_ms": {**conc, "clients": clients, "queries_per_client_per_round": per_client},
        "concurrent_rounds": c_rounds,
        "targets": {
            "image_query_overhead_ms": {
                "target": f"p50 of (query - its embed) <= {SERVE_TARGETS['image_query_overhead_ms']:g} ms",
                "verdict": judge(over["p50_ci"], SERVE_TARGETS["image_query_overhead_ms"], higher_is_better=False),
            },
            "text_query_ms": {
                "target": f"p50 < {SERVE_TARGETS['text_query_ms']:g} ms",
                "verdict": judge(
                    percentiles(texts, profile.halfwidth)["p50_ci"],
                    SERVE_TARGETS["text_query_ms"],
                    higher_is_better=False,
                )
                if texts
                else "absent",
            },
            "concurrent_16_p95_ms": {
                "target": f"p95 < {SERVE_TARGETS['concurrent_16_p95_ms']:g} ms with {clients} clients",
                "verdict": judge(conc["p95_ci"], SERVE_TARGETS["concurrent_16_p95_ms"], higher_is_better=False),
            },
        },
        # what `cbmir bench compare` tests: lower is better for these
        "samples": {"image_query_ms": total, "image_query_overhead_ms": overhead, "concurrent_16_ms": concurrent},
        "lower_is_better": True,
    }
