"""Load on ``cbmir serve`` (docs/search.md's figure): ``python scripts/serve_load.py --items 100000 --clients 16``.

Builds a 2D index with ResNet-50 (random weights, 64 px) over the test fixtures' BloodMNIST-format file, grows it to
``--items`` rows with synthetic Gaussian embeddings of the real items' mean and spread (as docs/search.md's latency
section did; thumbnails and labels repeat the real ones), starts ``cbmir serve`` on 127.0.0.1 with a token file of
one token per client, and lets ``--clients`` threads query it at once, ``--queries`` each, with a real item as PNG.
Prints (and writes to ``OUT/load.json``) errors, latency p50/p95/max, throughput and the server's idle and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def build(out: Path, model: str, size: int) -> Path:
    from cbmir.index.build import build_index, compose_config
    from tests.helpers.config import base_overrides
    from tests.helpers.medmnist_fixtures import write_medmnist

    data = out / "data"
    write_medmnist(data, "bloodmnist", size, n_classes=4, rgb=True, seed=4)
    overrides = base_overrides(data, out / "out", tiny=False)
    extra = [f"model={model}", "dataset=bloodmnist", f"size={size}", "index.thumb=16", "index.images=false"]
    return build_index(compose_config(overrides + extra))


def grow(root: Path, n: int, seed: int = 0) -> None:
    """Append synthetic rows to the current generation until it holds ``n`` items; re-hash what changed."""
    import faiss

    from cbmir.index.files import read_items, read_manifest, sha256_file, write_items
    from cbmir.index.generations import resolve
    from cbmir.safety.files import atomic_write_json

    gen = resolve(root)
    manifest = read_manifest(gen)
    emb = np.load(gen / "embeddings.npy")
    n0, extra = len(emb), n - len(emb)
    if extra <= 0:
        return
    rng = np.random.default_rng(seed)
    synthetic = (rng.standard_normal((extra, emb.shape[1])) * emb.std(0) + emb.mean(0)).astype(np.float32)
    np.save(gen / "embeddings.npy", np.concatenate([emb, synthetic]))
    index = faiss.read_index(str(gen / "faiss.index"))
    if manifest["metric"] == "cosine":
        faiss.normalize_L2(synthetic)
    index.add(synthetic)
    faiss.write_index(index, str(gen / "faiss.index"))
    pick = rng.integers(0, n0, extra)
    for name in ("labels.npy", "thumbs.npy"):
        array = np.load(gen / name)
        np.save(gen / name, np.concatenate([array, array[pick]]))
    items = read_items(gen / "items.csv")
    items += [{**items[p], "row": str(n0 + i), "position": str(n0 + i), "source": f"synthetic-{n0 + i}"}
              for i, p in enumerate(pick)]  # fmt: skip
    write_items(gen / "items.csv", items)
    for name in ("embeddings.npy", "faiss.index", "labels.npy", "thumbs.npy", "items.csv"):
        manifest["files"][name] = {"bytes": (gen / name).stat().st_size, "sha256": sha256_file(gen / name)}
    manifest["n_items"] = n
    manifest["splits"] = {**manifest["splits"], "train": manifest["splits"].get("train", n0) + extra}
    atomic_write_json(gen / "manifest.json", manifest)


def storm(pid: int, url: str, tokens: list[str], normal: bytes, folder: Path) -> dict:
    """20 hostile uploads at once (4 of each of issue 18's files, from several users) and 6 normal queries."""
    import httpx

    from tests.helpers import attack_files as a

    folder.mkdir(parents=True, exist_ok=True)
    files = [
        a.rle_dicom_claiming(folder / "rle_65535.dcm"),
        a.deflated_dicom_of_zeros(folder / "deflated_8192.dcm"),
        a.png_of_zeros(folder / "rgb_12000.png", 12000, 12000, rgb=True),
        a.png_of_zeros(folder / "bomb_30000.png", 30000, 30000),
        a.nifti_of_zeros(folder / "zeros_512.nii.gz"),
    ] * 4
    idle = status_mb(pid, "VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")
    statuses: list[int] = []
    latency: list[float] = []

    def attack(i: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
        with httpx.Client(base_url=url, timeout=300, headers=headers) as c:
            statuses.append(c.post("/api/query", files={"file": (files[i].name, files[i].read_bytes())}).status_code)

    def calm() -> None:
        with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {tokens[-1]}"}) as c:
            for _ in range(6):
                t0 = time.perf_counter()
                assert c.post("/api/query", files={"file": ("q.png", normal)}).status_code == 200
                latency.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(len(files))]
    threads.append(threading.Thread(target=calm))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "attack_statuses": sorted(statuses), "normal_latency_s": sorted(latency),
        "normal_median_s": statistics.median(latency), "idle_rss_mb": idle, "peak_rss_mb": status_mb(pid, "VmHWM"),
        "load": os.getloadavg(),
    }  # fmt: skip


def status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/cbmir-serve-load"))
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--queries", type=int, default=8, help="per client")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--storm", action="store_true", help="then 20 hostile uploads at once (issue 18's files)")
    args = p.parse_args()
    import httpx
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    folder = build(args.out, args.model, args.size)
    grow(folder, args.items)
    tokens = {f"user{i}": f"load-token-{i:02d}-{os.urandom(8).hex()}" for i in range(max(args.clients, 4))}
    token_file = args.out / "tokens.txt"
    token_file.write_text("".join(f"{k}:{v}\n" for k, v in tokens.items()))
    token_file.chmod(0o600)
    data = np.load(args.out / "data" / f"bloodmnist_{args.size}.npz")["train_images"][7]
    query = args.out / "query.png"
    Image.fromarray(data).save(query)
    body = query.read_bytes()
    command = [sys.executable, "-m", "cbmir.serve", str(folder), "--port", str(args.port), "--device", "cpu",
               "--token-file", str(token_file), "--queue", str(max(args.clients, 32)), "--user-queries", "8",
               "--query-rate", "100000/minute",
               "--request-rate", "100000/minute", "--audit-log", str(args.out / "audit.jsonl")]  # fmt: skip
    server = subprocess.Popen(command, cwd=REPO, stdout=open(args.out / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{args.port}"
    try:
        t_start = time.monotonic()
        while True:
            assert server.poll() is None, (args.out / "server.log").read_text()
            try:
                if (
                    httpx.get(url + "/api/info", headers={"Authorization": f"Bearer {tokens['user0']}"}).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        start_s = time.monotonic() - t_start
        with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {tokens['user0']}"}) as c:
            for _ in range(3):
                assert c.post("/api/query", files={"file": ("q.png", body)}).status_code == 200
        idle = status_mb(server.pid, "VmRSS")
        results: list[tuple[int, float, float]] = []  # status, latency, server search seconds
        lock = threading.Lock()

        def client(token: str) -> None:
            with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {token}"}) as c:
                for _ in range(args.queries):
                    t0 = time.perf_counter()
                    r = c.post("/api/query", files={"file": ("q.png", body)})
                    took = time.perf_counter() - t0
                    search = r.json()["seconds"]["search"] if r.status_code == 200 else float("nan")
                    with lock:
                        results.append((r.status_code, took, search))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(t,)) for t in list(tokens.values())[: args.clients]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        ok = [r for r in results if r[0] == 200]
        lat = sorted(r[1] for r in ok) or [float("nan")]
        report = {
            "items": args.items, "clients": args.clients, "queries": len(results),
            "errors": len(results) - len(ok), "statuses": sorted({r[0] for r in results}),
            "p50_s": statistics.median(lat), "p95_s": lat[int(0.95 * (len(lat) - 1))], "max_s": lat[-1],
            "search_median_s": statistics.median([r[2] for r in ok] or [float("nan")]),
            "throughput_qps": len(ok) / wall,
            "server_start_s": start_s, "idle_rss_mb": idle, "peak_rss_mb": status_mb(server.pid, "VmHWM"),
            "load": os.getloadavg(), "cpus": os.cpu_count(),
        }  # fmt: skip
        if args.storm:
            report["storm"] = storm(server.pid, url, list(tokens.values()), body, args.out / "attacks")
        print(json.dumps(report, indent=1))
        (args.out / "load.json").write_text(json.dumps(report, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
