"""What could disturb a measurement: the machine (CPU, governor, threads, commit) and, per section, the load and
the CPU time other processes took while it ran (``/proc/stat`` minus this process's and its children's)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

PROC = Path("/proc")
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_model() -> str:
    for line in (read(PROC / "cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def commit(root: Path | None = None) -> str | None:
    """The checkout's commit, ``+dirty`` when tracked files differ from it; None outside a git checkout."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """The host and thread settings a figure depends on (None where this system does not say)."""
    import torch

    governor = read(GOVERNOR)
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "governor": governor.strip() if governor else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "commit": commit(),
        "platform": platform.platform(),
    }


def busy_seconds() -> float | None:
    """CPU seconds every process of the machine has spent since boot (``/proc/stat`` non-idle jiffies)."""
    text = read(PROC / "stat")
    if not text:
        return None
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and its finished, waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Disturbance:
    """Load average and other processes' CPU time over a ``with`` block; ``.record`` is its JSON."""

    def __enter__(self) -> Disturbance:
        self.load_start, self.wall0 = os.getloadavg()[0], time.perf_counter()
        self.busy0, self.own0 = busy_seconds(), own_seconds()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.wall0
        busy, own = busy_seconds(), own_seconds() - self.own0
        other = None if busy is None or self.busy0 is None else max(0.0, busy - self.busy0 - own)
        cpus = os.cpu_count() or 1
        self.record = {
            "wall_s": round(wall, 2),
            "load_average": [round(self.load_start, 2), round(os.getloadavg()[0], 2)],
            "own_cpu_s": round(own, 2),
            "other_cpu_s": None if other is None else round(other, 2),
            # the share of the machine's CPU capacity other processes took: 0 idle, 1 every core busy elsewhere
            "other_cpu_share": None if other is None or wall <= 0 else round(other / (wall * cpus), 3),
        }
