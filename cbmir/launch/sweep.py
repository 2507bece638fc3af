"""A Hydra callback that sums up a sweep: which cells ran, were skipped or failed, and the exit status.

``on_job_end`` runs wherever the job runs: in the launching process with Hydra's basic
launcher, but in the job's own process (another host, for SLURM) with the submitit
launchers. So each job writes its outcome into its job folder, and ``on_multirun_end``
(always in the launching process) reads every outcome of the sweep from there.

Ctrl-C (SIGINT) in a sweep stops the cell that runs (its result is not written; finished cells stay
finished), marks every later cell "not run", prints the summary and exits with status 130. A second
Ctrl-C interrupts at once.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cbmir.logs import get_logger, global_rank
from cbmir.safety.files import atomic_write_json

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


OUTCOME_FILE = "cbmir_outcome.json"


def outcome_of(job_return: JobReturn) -> dict[str, Any] | None:
    if job_return.status == JobStatus.COMPLETED and isinstance(job_return._return_value, dict):
        return job_return._return_value
    if job_return.status == JobStatus.FAILED:
        return {"cell": "?", "status": "failed", "message": repr(job_return._return_value)}
    return None


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # a reused sweep folder's outcomes are stale; under torchrun only rank 0 clears them (a rank that starts
        # late must not delete an outcome rank 0 has already written)
        if global_rank() == 0:
            for stale in Path(str(config.hydra.sweep.dir)).glob(f"**/{OUTCOME_FILE}"):
                stale.unlink()
        _State.interrupted = False
        _State.previous_handler = signal.signal(signal.SIGINT, _on_sigint)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        outcome = outcome_of(job_return)
        output_dir = config.hydra.runtime.get("output_dir")
        if outcome is not None and output_dir and global_rank() == 0:  # one writer per outcome file
            outcome["job"] = config.hydra.job.get("num")
            atomic_write_json(Path(str(output_dir)) / OUTCOME_FILE, outcome)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _State.previous_handler is not None:
            signal.signal(signal.SIGINT, _State.previous_handler)
        files = sorted(Path(str(config.hydra.sweep.dir)).glob(f"**/{OUTCOME_FILE}"))
        outcomes = [json.loads(f.read_text()) for f in files]
        if not outcomes:
            return
        by_status: dict[str, list[dict[str, Any]]] = {}
        for outcome in sorted(outcomes, key=lambda o: o.get("job") or 0):
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
