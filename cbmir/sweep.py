"""A Hydra callback that sums up a sweep: which cells ran, were skipped or failed, and the exit status.

Ctrl-C (SIGINT) in a sweep stops the cell that runs (its result is not written; finished cells stay
finished), marks every later cell "not run", prints the summary and exits with status 130. A second
Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cbmir.logs import get_logger

log = get_logger(__name__)

STATUSES = ("ok", "skipped", "busy", "failed", "interrupted", "not run")
#: Exit status of an interrupted sweep (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """Ctrl-C during a cell of a sweep (an ``Exception``, so Lightning tears down and re-raises it)."""


class _State:
    interrupted = False
    in_cell = False
    previous_handler: Any = None


def _on_sigint(signum, frame) -> None:
    _State.interrupted = True
    signal.signal(signal.SIGINT, _State.previous_handler or signal.default_int_handler)  # a second Ctrl-C: at once
    if _State.in_cell:
        raise Interrupted("interrupted by Ctrl-C")


def interrupted() -> bool:
    """True once Ctrl-C reached this sweep: later cells are not started."""
    return _State.interrupted


@contextmanager
def interruptible_cell() -> Iterator[None]:
    """Ctrl-C inside this block raises :class:`Interrupted` in the cell; outside it only stops the sweep."""
    _State.in_cell = True
    try:
        yield
    finally:
        _State.in_cell = False


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.outcomes: list[dict[str, Any]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.outcomes = []
        _State.interrupted = False
        _State.previous_handler = signal.signal(signal.SIGINT, _on_sigint)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return._return_value, dict):
            self.outcomes.append(job_return._return_value)
        elif job_return.status == JobStatus.FAILED:
            self.outcomes.append({"cell": "?", "status": "failed", "message": repr(job_return._return_value)})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _State.previous_handler is not None:
            signal.signal(signal.SIGINT, _State.previous_handler)
        if not self.outcomes:
            return
        by_status: dict[str, list[dict[str, Any]]] = {}
        for outcome in self.outcomes:
            by_status.setdefault(outcome["status"], []).append(outcome)
        n = {status: len(by_status.get(status, [])) for status in STATUSES}
        counts = f"{n['ok']} cells ok, {n['skipped']} skipped, {n['failed']} failed" + "".join(
            f", {n[status]} {status}" for status in ("busy", "interrupted", "not run") if n[status]
        )
        if _State.interrupted:
            log.error("sweep interrupted by Ctrl-C: %s", counts)
        else:
            log.info("sweep: %s", counts)
        for outcome in by_status.get("skipped", []):
            log.info("  skipped %s: %s", outcome["cell"], outcome["message"].splitlines()[0])
        for outcome in by_status.get("busy", []):
            log.warning("  busy    %s: %s", outcome["cell"], outcome["message"].splitlines()[0])
        for status in ("failed", "interrupted", "not run"):
            for outcome in by_status.get(status, []):
                log.error("  %-7s %s: %s", status.upper(), outcome["cell"], outcome["message"].splitlines()[0])
        if _State.interrupted:
            sys.exit(EXIT_INTERRUPTED)
        if by_status.get("failed"):
            sys.exit(1)
