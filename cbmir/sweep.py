"""A Hydra callback that sums up a sweep: which cells ran, were skipped or failed, and the exit status.

``on_job_end`` runs wherever the job runs: in the launching process with Hydra's basic
launcher, but in the job's own process (another host, for SLURM) with the submitit
launchers. So each job writes its outcome into its job folder, and ``on_multirun_end``
(always in the launching process) reads every outcome of the sweep from there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cbmir.files import atomic_write_json

#: One per job folder of a sweep (``<sweep dir>/<job num>/``).
OUTCOME_FILE = "cbmir_outcome.json"


def outcome_of(job_return: JobReturn) -> dict[str, Any] | None:
    if job_return.status == JobStatus.COMPLETED and isinstance(job_return._return_value, dict):
        return job_return._return_value
    if job_return.status == JobStatus.FAILED:
        return {"cell": "?", "status": "failed", "message": repr(job_return._return_value)}
    return None


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        for stale in Path(str(config.hydra.sweep.dir)).glob(f"**/{OUTCOME_FILE}"):  # a reused sweep folder
            stale.unlink()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        outcome = outcome_of(job_return)
        output_dir = config.hydra.runtime.get("output_dir")
        if outcome is not None and output_dir:
            outcome["job"] = config.hydra.job.get("num")
            atomic_write_json(Path(str(output_dir)) / OUTCOME_FILE, outcome)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        files = sorted(Path(str(config.hydra.sweep.dir)).glob(f"**/{OUTCOME_FILE}"))
        outcomes = [json.loads(f.read_text()) for f in files]
        if not outcomes:
            return
        by_status: dict[str, list[dict[str, Any]]] = {}
        for outcome in sorted(outcomes, key=lambda o: o.get("job") or 0):
            by_status.setdefault(outcome["status"], []).append(outcome)
        print(
            f"[cbmir] sweep: {len(by_status.get('ok', []))} cells ok, "
            f"{len(by_status.get('skipped', []))} skipped, {len(by_status.get('failed', []))} failed"
        )
        for outcome in by_status.get("skipped", []):
            print(f"  skipped {outcome['cell']}: {outcome['message'].splitlines()[0]}")
        for outcome in by_status.get("failed", []):
            print(f"  FAILED  {outcome['cell']}: {outcome['message'].splitlines()[0]}")
        if by_status.get("failed"):
            sys.exit(1)
