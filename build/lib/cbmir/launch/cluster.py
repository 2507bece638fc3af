"""Cluster sweeps through Hydra's submitit launcher, with each cell's resources read from its own config.

The submitit plugin resolves ``hydra.launcher`` once per sweep, against the sweep's primary
config: ``mem_gb: ${model.resources.mem_gb}`` would give every job of
``-m model=resnet50,dinov2_g`` the resources of the primary config's model (the default,
not the job's). These launchers resolve the launcher node per job instead (composing each
job's config in the launching process, as the plugin's own jobs do), group the jobs by the
resources they ask for, and hand each group to the unchanged plugin as one job array
(``array_parallelism`` bounds each array). SLURM does the scheduling; nothing here does.
Hydra only loads launchers from the ``hydra_plugins`` namespace: the two launcher classes
(``PerJobResources`` + the plugin's SLURM or local launcher) are ``hydra_plugins.cbmir_cluster``.

    python -m cbmir.run -m experiment=paper hydra/launcher=slurm hydra.launcher.partition=gpu

Needs the ``cluster`` extra (``pip install -e '.[cluster]'``: hydra-submitit-launcher).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: Launcher keys that are the same for every job of a sweep (paths and names of the sweep itself).
SWEEP_LEVEL_KEYS = frozenset({"_target_", "submitit_folder", "name", "max_num_timeout"})


def job_resources(sweep_config: DictConfig) -> dict[str, Any]:
    """The launcher parameters of one job, resolved against that job's own config."""
    launcher = sweep_config.hydra.launcher
    out = {}
    for key in launcher:
        if key in SWEEP_LEVEL_KEYS:
            continue
        value = launcher[key]
        out[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def group_by_resources(resources: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Job positions by identical resource requests, in first-seen order (one job array each)."""
    groups: dict[str, list[int]] = {}
    for i, params in enumerate(resources):
        groups.setdefault(json.dumps(params, sort_keys=True, default=str), []).append(i)
    return groups


class PerJobResources(BaseSubmititLauncher):
    """Submits one array per distinct resource request; jobs keep their sweep numbers (hydra.job.num)."""

    #: launcher-local job position -> the job's number in the whole sweep (set on each group's copy)
    job_numbers: list[int] | None = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        resources = [job_resources(loader.load_sweep_config(self.config, list(o))) for o in job_overrides]
        groups = group_by_resources(resources)
        launchers = []
        for members in groups.values():
            group = copy.copy(self)
            group.params = {**self.params, **resources[members[0]]}
            group.job_numbers = [initial_job_idx + i for i in members]
            launchers.append((group, members))
            log.info(
                "job array of %d cell(s) with %s",
                len(members),
                ", ".join(f"{k}={v}" for k, v in sorted(resources[members[0]].items()) if v is not None),
            )
        results: list[JobReturn | None] = [None] * len(job_overrides)
        # each plugin launch submits its array, then waits for it: submit every array first, wait for all
        with ThreadPoolExecutor(max_workers=len(launchers)) as pool:
            futures = [
                (pool.submit(_PluginLaunch(group), [job_overrides[i] for i in members], 0), members)
                for group, members in launchers
            ]
            for future, members in futures:
                for i, ret in zip(members, future.result()):
                    results[i] = ret
        return results  # type: ignore[return-value]

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        """In the job's process: the group-local position back to the job's number in the sweep."""
        if self.job_numbers is not None:
            job_num = self.job_numbers[job_num]
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)


class _PluginLaunch:
    """The plugin's own ``launch`` (executor, parameters, ``map_array``, wait) on one group's launcher copy."""

    def __init__(self, launcher: PerJobResources):
        self.launcher = launcher

    def __call__(self, job_overrides, initial_job_idx):
        return BaseSubmititLauncher.launch(self.launcher, job_overrides, initial_job_idx)
