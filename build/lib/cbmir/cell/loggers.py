"""Experiment loggers of a cell: CSV in the cell's folder and a W&B run (offline by default)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cbmir.logs import get_logger
from cbmir.safety.secrets import redact, redacted_argv

if TYPE_CHECKING:
    from cbmir.cell.spec import CellSpec

log = get_logger(__name__)


def make_loggers(spec: CellSpec, *, group: str | None = None) -> list:
    """Lightning loggers for one cell; W&B runs are named by the cell and grouped by sweep."""
    loggers = []
    out_dir, name = spec.out_dir, spec.name
    lcfg = spec.logger
    if lcfg.get("csv", {}).get("enabled", False):
        from lightning.pytorch.loggers import CSVLogger

        csv = CSVLogger(save_dir=str(out_dir), name="logs", version="")
        csv.log_hyperparams(_flat_config(spec.config))
        loggers.append(csv)
    wcfg = lcfg.get("wandb", {})
    if wcfg.get("enabled", False) and wcfg.get("mode", "offline") != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        save_dir = Path(wcfg.get("dir") or out_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE") or wcfg.get("mode", "offline")
        wandb_logger = WandbLogger(
            project=wcfg.get("project", "cbmir"),
            entity=wcfg.get("entity"),
            name=name,
            group=wcfg.get("group") or group or "single",
            tags=list(wcfg.get("tags") or []),
            job_type="cell",
            save_dir=str(save_dir),
            mode=mode,
            config=redact(spec.config),
        )
        # Flat keys W&B can group and filter on, whatever the nesting of the config.
        with redacted_argv():  # the run starts here, and W&B records the command line in its metadata
            wandb_logger.experiment.config.update(
                {
                    "cell/model": spec.model_id,
                    "cell/dataset": str(spec.dataset.name),
                    "cell/size": spec.size,
                    "cell/protocol": spec.protocol.name,
                    "cell/metric": spec.protocol.metric,
                    "cell/sweep": group or "single",
                },
                allow_val_change=True,
            )
        loggers.append(wandb_logger)
    return loggers


def close_loggers(loggers: list) -> None:
    """Flush CSV and always finish the W&B run, even when the cell failed."""
    for logger in loggers:
        try:
            logger.finalize("success")
        except Exception as exc:  # never mask the cell's own error
            log.warning("logger %s did not finalise: %s", type(logger).__name__, exc)
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def _flat_config(config: dict) -> dict:
    def flatten(d, prefix=""):
        for key, value in d.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(flatten(redact(config)))
