"""Command line: ``cbmir run [overrides]`` (or ``python -m cbmir.run``) runs one cell, ``-m`` sweeps cells.

A thin shell around :func:`cbmir.cell.run.run_cell`: :func:`main` checks the command line's cells before
anything heavy is imported (:mod:`cbmir.launch.preflight`), then Hydra's application composes each cell, runs it,
reports user errors as one message with exit status 2, and in a sweep records each cell's outcome so that one
broken cell neither stops the sweep nor hides in its output.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cbmir.errors import CbmirError, InvalidCellError, LockBusyError
from cbmir.launch import sweep
from cbmir.launch.preflight import check_launch
from cbmir.layout import CONF_DIR, cell_name
from cbmir.logs import get_logger

log = get_logger("cbmir.launch.run")  # not __name__: that is "__main__" under python -m cbmir.run
logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _one_output_path() -> None:
    """Lightning's package adds its own stderr handler on import; drop it so its lines reach Hydra's handlers once."""
    logging.getLogger("lightning").handlers.clear()


def _sweep_group(multirun: bool) -> str | None:
    if not multirun:
        return None
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    return f"{sweep_dir.parent.name}_{sweep_dir.name}"


def main(argv: list[str] | None = None) -> int:
    """Check the command line's cells (torch-free), then hand it to Hydra's application."""
    from cbmir.launch.preflight import preflight

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        preflight(args)
    except CbmirError as exc:
        _fail(exc)
    sys.argv = [sys.argv[0], *args]
    cell_job()
    return 0


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def cell_job(cfg: DictConfig) -> dict[str, Any]:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    from cbmir.cell.run import run_cell

    _one_output_path()
    name = cell_name(cfg)
    if multirun and sweep.interrupted():
        return {"cell": name, "status": "not run", "message": "the sweep was interrupted (Ctrl-C) before it"}
    try:
        check_launch(cfg, multirun)
        with sweep.interruptible_cell():
            result = run_cell(cfg, group=_sweep_group(multirun))
        return {"cell": name, "status": "ok", "metrics": (result or {}).get("metrics")}
    except sweep.Interrupted:
        log.error("INTERRUPTED %s: Ctrl-C; its result was not written, finished cells stay finished", name)
        return {"cell": name, "status": "interrupted", "message": "Ctrl-C while it ran; rerun the sweep to finish it"}
    except LockBusyError as exc:
        if not multirun:
            _fail(exc)
        log.warning("busy %s: %s", name, exc)
        return {"cell": name, "status": "busy", "message": str(exc)}
    except InvalidCellError as exc:
        if not multirun:
            _fail(exc)
        log.info("skipped %s: %s", name, exc)
        return {"cell": name, "status": "skipped", "message": str(exc)}
    except CbmirError as exc:
        if not multirun:
            _fail(exc)
        log.error("FAILED %s: %s", name, exc)
        return {"cell": name, "status": "failed", "message": str(exc)}
    except Exception as exc:
        if not multirun:
            raise
        log.exception("FAILED %s: %s: %s", name, type(exc).__name__, exc)
        return {"cell": name, "status": "failed", "message": f"{type(exc).__name__}: {exc}"}


def _fail(exc: Exception) -> None:
    """A user's mistake: one message on stderr on every rank (each rank exits on it), no traceback, exit status 2."""
    print(f"cbmir: error: {exc}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
