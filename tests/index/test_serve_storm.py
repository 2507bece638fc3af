"""Issue 18's storm, for real: 20 hostile uploads at once against a `cbmir serve` process, normal queries meanwhile.

The server is its own process (its peak memory is the subject): `python -m cbmir.serve` on 127.0.0.1 with the tiny
CNN's 64-px index, 2 workers. Its peak RSS (Linux VmHWM, reset after warming up) must stay within 1 GiB of its idle
RSS, every attack must get a 4xx, and the normal queries sent during the storm must all be answered.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cbmir.index.files import open_index
from tests.helpers.serve_fixtures import free_port, png_bytes

REPO = Path(__file__).resolve().parents[2]


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.slow
def test_twenty_attack_uploads_at_once_leave_the_server_answering(
    tiny_index, data_dir, tmp_path_factory, tmp_path, attacks
):
    folder = tiny_index("dataset=bloodmnist", "size=64")
    normal = png_bytes(open_index(folder).images[7])
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    command = [sys.executable, "-m", "cbmir.serve", str(folder), "--port", str(port), "--device", "cpu",
               "--workers", "2", "--queue", "32", "--user-queries", "64", "--query-rate", "1000/minute",
               "--request-rate", "5000/minute", "--max-upload-mb", "5"]  # fmt: skip
    server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                try:
                    if client.get("/api/info").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
            for _ in range(3):  # warm: the model and the thread pool have run
                assert client.post("/api/query", files={"file": ("q.png", normal)}).status_code == 200
            idle_kb = status_kb(server.pid, "VmRSS")
            with open(f"/proc/{server.pid}/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak (VmHWM) to the current RSS

            uploads = [(name, path.read_bytes()) for name, path in attacks.items()] * 4  # 20 hostile uploads

            def attack(item: tuple[str, bytes]) -> tuple[str, int, str]:
                with httpx.Client(base_url=url, timeout=120) as c:
                    r = c.post("/api/query", files={"file": item})
                    return item[0], r.status_code, r.text

            def normal_queries() -> list[tuple[int, float]]:
                out = []
                with httpx.Client(base_url=url, timeout=120) as c:
                    for _ in range(6):
                        t0 = time.perf_counter()
                        r = c.post("/api/query", files={"file": ("q.png", normal)})
                        out.append((r.status_code, time.perf_counter() - t0))
                return out

            t0 = time.perf_counter()
            with ThreadPoolExecutor(21) as pool:
                calm = pool.submit(normal_queries)
                results = list(pool.map(attack, uploads))
                answered = calm.result(timeout=300)
            storm_s = time.perf_counter() - t0
            peak_kb = status_kb(server.pid, "VmHWM")
            assert server.poll() is None
            assert client.get("/api/info").status_code == 200
        assert all(400 <= code < 500 for _, code, _ in results), [(n, c, t[:200]) for n, c, t in results]
        assert [code for code, _ in answered] == [200] * 6
        latency = [s for _, s in answered]
        growth_mb = (peak_kb - idle_kb) / 1024
        print(
            f"\nstorm: 20 attack uploads + 6 normal queries in {storm_s:.1f} s; idle RSS {idle_kb / 1024:.0f} MB, "
            f"peak RSS {peak_kb / 1024:.0f} MB (+{growth_mb:.0f} MB); normal query latency median "
            f"{1000 * statistics.median(latency):.0f} ms (min {1000 * min(latency):.0f}, "
            f"max {1000 * max(latency):.0f}); "
            f"load {os.getloadavg()[0]:.1f}"
        )
        assert growth_mb <= 1024
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
