"""Status lines speak once: on global rank 0, whichever launcher set the rank."""

import logging
import sys

import pytest

from cbmir.logs import get_logger, global_rank

RANK_ZERO_MODULE = "lightning_utilities.core.rank_zero"


@pytest.fixture
def no_lightning_rank(monkeypatch):
    """As in a process that has not imported Lightning: the launcher's variables decide."""
    monkeypatch.delitem(sys.modules, RANK_ZERO_MODULE, raising=False)
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_rank_from_the_launcher_variables(no_lightning_rank):
    assert global_rank() == 0
    no_lightning_rank.setenv("LOCAL_RANK", "1")
    assert global_rank() == 1
    no_lightning_rank.setenv("RANK", "0")  # torchrun's global rank wins over the local one
    assert global_rank() == 0


def test_rank_set_by_a_lightning_strategy_wins(monkeypatch):
    from lightning_utilities.core.rank_zero import rank_zero_only

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(rank_zero_only, "rank", 3, raising=False)
    assert global_rank() == 3


def test_records_only_on_rank_zero(no_lightning_rank, caplog):
    log = get_logger("cbmir.test_logs")
    assert get_logger("cbmir.test_logs").filters == log.filters  # one filter, however often it is asked for
    caplog.set_level(logging.INFO, logger="cbmir")
    log.info("from rank zero")
    no_lightning_rank.setenv("RANK", "1")
    log.info("from rank one")
    log.error("an error on rank one")
    assert [r.getMessage() for r in caplog.records] == ["from rank zero"]
