"""cbmir's cluster launchers, where Hydra looks for launchers (``hydra_plugins``); logic in cbmir.launch.cluster.

Defined only when the ``cluster`` extra (hydra-submitit-launcher) is installed.
"""

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as _SubmititLocal
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurm
except ImportError:  # no `cluster` extra: hydra/launcher=slurm|local are unavailable, everything else works
    pass
else:
    from cbmir.launch.cluster import PerJobResources

    class SlurmLauncher(PerJobResources, _SubmititSlurm):
        """``hydra/launcher=slurm``: job arrays on SLURM, resources per cell (``model.resources``)."""

    class LocalLauncher(PerJobResources, _SubmititLocal):
        """``hydra/launcher=local``: the same, each cell its own local process (as on SLURM), without a cluster."""
