"""Status lines: Python loggers named ``cbmir.<module>`` that speak on global rank 0 only.

(Not to be confused with :mod:`cbmir.cell.loggers`, the experiment trackers of a cell: CSV and W&B.)

Every process of a multi-process launch runs the same code, so without a filter each status
line would appear once per rank. Handlers and levels are left to the application: under
``python -m cbmir.run`` Hydra's job logging sends INFO and above to stdout (and to the run's
``.log`` file). Torch-free, so that light modules can log without importing torch.
"""

from __future__ import annotations

import logging
import os
import sys

#: The variables a launcher sets, in Lightning's order of precedence (torchrun: RANK; Lightning: LOCAL_RANK; SLURM).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's global rank: Lightning's, once a strategy has set it, otherwise the launcher's variables."""
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")  # read, never imported here
    rank = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return int(rank)
    for variable in RANK_VARIABLES:
        if os.environ.get(variable) is not None:
            return int(os.environ[variable])
    return 0


class RankZeroFilter(logging.Filter):
    """Passes records on global rank 0, drops them on every other rank (decided per record: ranks are set late)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return global_rank() == 0


_RANK_ZERO = RankZeroFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` whose records are emitted on global rank 0 only."""
    logger = logging.getLogger(name)
    if _RANK_ZERO not in logger.filters:
        logger.addFilter(_RANK_ZERO)
    return logger


def cli_logging(verbose: bool = False) -> None:
    """The one logging set-up of every ``cbmir`` command outside Hydra: ``[cbmir] message`` on stderr."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="[cbmir] %(message)s", force=True)
    for noisy in ("faiss.loader", "httpx", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
