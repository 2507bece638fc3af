"""Peak memory per phase of a process and its loader workers, from Linux's ``smaps_rollup`` (stdlib only, so a
measured process imports nothing heavy for it)."""

from __future__ import annotations

import os
import threading
import time


def gb(n_bytes: float) -> float:
    return float(n_bytes) / 1e9


def rollup(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes: Rss and the proportional (shared pages split) Pss parts."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return kids


class MemorySampler(threading.Thread):
    """Peaks, per phase, of this process's and its loader workers' memory (Linux ``smaps_rollup``).

    ``Pss`` splits shared pages between the processes that map them, so the sum over the main process
    and its workers is the run's real footprint; ``anon`` (+ shared memory) cannot be reclaimed, ``file``
    is memory-mapped data the kernel can drop at any time.
    """

    KEYS = ("main_rss", "main_anon", "main_file", "workers_rss", "total_pss", "total_pss_anon", "total_pss_file")

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = dict.fromkeys(self.KEYS, 0)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._phase = 0  # a sample read before phase() started a new phase is not counted in the new one

    def sample(self) -> None:
        started = self._phase
        pid = os.getpid()
        main = rollup(pid)
        kids = [rollup(c) for c in children(pid)]
        every = [main, *kids]
        now = {
            "main_rss": main.get("Rss", 0),
            "main_anon": main.get("Pss_Anon", 0) + main.get("Pss_Shmem", 0),
            "main_file": main.get("Pss_File", 0),
            "workers_rss": sum(k.get("Rss", 0) for k in kids),
            "total_pss": sum(p.get("Pss", 0) for p in every),
            "total_pss_anon": sum(p.get("Pss_Anon", 0) + p.get("Pss_Shmem", 0) for p in every),
            "total_pss_file": sum(p.get("Pss_File", 0) for p in every),
        }
        with self._lock:
            if started != self._phase:
                return
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def phase(self) -> dict[str, float]:
        """The peaks since the last call (GB), then start afresh."""
        self.sample()
        with self._lock:
            out = {f"peak_{k}_gb": gb(v) for k, v in self.peak.items()}
            self.peak = dict.fromkeys(self.KEYS, 0)
            self._phase += 1
        return out

    def stop(self) -> None:
        self._halt.set()
        self.join()
