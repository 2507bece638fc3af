"""Peak resident memory of this process over a block, from Linux's VmHWM (reset by ``/proc/self/clear_refs``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


@contextmanager
def peak_rss_growth() -> Iterator[dict]:
    """``{"mb": peak RSS inside the block minus RSS before it}``: VmHWM is reset to the current RSS first."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    before = _status_kb("VmRSS")
    out: dict = {}
    try:
        yield out
    finally:
        out["mb"] = (_status_kb("VmHWM") - before) / 1024
