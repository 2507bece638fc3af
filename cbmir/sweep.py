"""A Hydra callback that sums up a sweep: which cells ran, were skipped or failed, and the exit status."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cbmir.logs import get_logger

log = get_logger(__name__)


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.outcomes: list[dict[str, Any]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.outcomes = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return._return_value, dict):
            self.outcomes.append(job_return._return_value)
        elif job_return.status == JobStatus.FAILED:
            self.outcomes.append({"cell": "?", "status": "failed", "message": repr(job_return._return_value)})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.outcomes:
            return
        by_status: dict[str, list[dict[str, Any]]] = {}
        for outcome in self.outcomes:
            by_status.setdefault(outcome["status"], []).append(outcome)
        log.info(
            "sweep: %d cells ok, %d skipped, %d failed",
            *(len(by_status.get(status, [])) for status in ("ok", "skipped", "failed")),
        )
        for outcome in by_status.get("skipped", []):
            log.info("  skipped %s: %s", outcome["cell"], outcome["message"].splitlines()[0])
        for outcome in by_status.get("failed", []):
            log.error("  FAILED  %s: %s", outcome["cell"], outcome["message"].splitlines()[0])
        if by_status.get("failed"):
            sys.exit(1)
