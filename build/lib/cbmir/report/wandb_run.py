"""The report as one W&B run (``job_type=report``): results (with intervals), pairwise and paper comparison
tables, every figure as an image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cbmir.report.build import Report
from cbmir.report.pairwise import PAIRWISE_COLUMNS
from cbmir.report.tables import result_columns, result_rows


def log_to_wandb(
    report: Report,
    *,
    project: str = "cbmir",
    entity: str | None = None,
    mode: str = "offline",
    name: str | None = None,
    group: str | None = None,
    wandb_dir: str | Path | None = None,
) -> str | None:
    """One W&B run (job_type ``report``) with the results and comparison as tables and every figure as an image."""
    import wandb

    wandb_dir = Path(wandb_dir or report.out)
    wandb_dir.mkdir(parents=True, exist_ok=True)
    protocols = list(report.files)
    run = wandb.init(
        project=project,
        entity=entity,
        mode=mode,
        name=name or "report",
        group=group,
        job_type="report",
        dir=str(wandb_dir),
        config={"report/out": str(report.out), "report/protocols": protocols, "report/n_cells": len(report.cells)},
    )
    try:
        payload: dict[str, Any] = {}
        for protocol in protocols:
            pcells = [c for c in report.cells if c.protocol == protocol]
            significance = report.significance.get(protocol)
            columns = result_columns(pcells, intervals=significance is not None)
            data = [[_wandb_value(row.get(c)) for c in columns] for row in result_rows(pcells, significance)]
            payload[f"{protocol}/results"] = wandb.Table(columns=columns, data=data)
            if report.pairwise.get(protocol):
                data = [[_wandb_value(r[c]) for c in PAIRWISE_COLUMNS] for r in report.pairwise[protocol]]
                payload[f"{protocol}/pairwise"] = wandb.Table(columns=list(PAIRWISE_COLUMNS), data=data)
            for png in (f for f in report.files[protocol] if f.suffix == ".png"):
                payload[f"{protocol}/{png.stem}"] = wandb.Image(str(png), caption=f"{protocol}: {png.stem}")
        if report.comparison:
            columns = list(report.comparison[0])
            payload["paper/comparison"] = wandb.Table(
                columns=columns, data=[[r[c] for c in columns] for r in report.comparison]
            )
            columns = list(report.summary[0])
            payload["paper/comparison_summary"] = wandb.Table(
                columns=columns, data=[[r[c] for c in columns] for r in report.summary]
            )
            for s in report.summary:
                if s["metric"] == "all" and s["mean_abs_diff"] is not None:
                    run.summary[f"paper_vs_cbmir/{s['model']}/mean_abs_diff"] = s["mean_abs_diff"]
                    run.summary[f"paper_vs_cbmir/{s['model']}/within_1"] = s["within_1"]
        run.log(payload)
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def _wandb_value(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
