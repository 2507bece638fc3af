"""``python -m cbmir.report``: find results, write the report, optionally log it to W&B.

Warnings (skipped files, duplicate cells) go through logging to stderr; stdout carries only where the
report (and the W&B run) went and the pooled distance to the paper.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cbmir.layout import CONF_DIR
from cbmir.report.build import build_report
from cbmir.report.collect import find_result_files, load_cells
from cbmir.report.naming import PAPER_PROTOCOL
from cbmir.report.paper import load_paper, published_cells
from cbmir.report.significance import report_settings
from cbmir.report.wandb_run import log_to_wandb

log = logging.getLogger(__name__)


def default_output_dir() -> Path:
    """``paths.output_dir`` of the config tree (conf/paths/default.yaml), ``outputs`` if it cannot be read."""
    try:
        from omegaconf import OmegaConf

        return Path(str(OmegaConf.load(CONF_DIR / "paths" / "default.yaml").output_dir))
    except Exception:
        return Path("outputs")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; inputs, report and W&B folders default to places under ``paths.output_dir``."""
    output_dir = default_output_dir()
    p = argparse.ArgumentParser(
        prog="cbmir report",
        description="Build the study's tables and figures from result folders and compare them with the paper.",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help=f"output dirs, multirun dirs, result folders or result.json files (default: {output_dir})",
    )
    p.add_argument("--out", type=Path, default=None, help=f"report folder (default: {output_dir / 'report'})")
    p.add_argument("--no-figures", action="store_true", help="tables and CSV only")
    p.add_argument(
        "--no-ci",
        action="store_true",
        help="the paper's shape: values only, no intervals, significance marks or pairwise tables",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=None,
        help="bootstrap resamples and sign flips (default: stats.resamples of conf/stats/default.yaml)",
    )
    p.add_argument(
        "--with-published",
        action="store_true",
        help="also render the paper's own numbers as the pseudo-protocol 'published'",
    )
    p.add_argument("--paper-csv", type=Path, default=None, help="published numbers (default: the packaged copy)")
    p.add_argument("--wandb", action="store_true", help="log the tables and figures to a W&B run (job_type=report)")
    p.add_argument(
        "--wandb-mode",
        choices=("offline", "online", "disabled"),
        default=None,
        help="default: $WANDB_MODE, else offline",
    )
    p.add_argument("--wandb-project", default="cbmir")
    p.add_argument("--wandb-entity", default=None)
    p.add_argument("--wandb-name", default=None, help="run name (default: report)")
    p.add_argument("--wandb-group", default=None, help="e.g. the sweep's group, to sit beside its cell runs")
    p.add_argument(
        "--wandb-dir",
        type=Path,
        default=None,
        help=f"where wandb/ goes (default: {output_dir}, beside the cells' runs)",
    )
    args = p.parse_args(argv)
    args.inputs = args.inputs or [output_dir]
    args.out = args.out or output_dir / "report"
    args.wandb_dir = args.wandb_dir or output_dir
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build the report; 1 when no result was found. Warnings go to stderr, where it was written to stdout."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    args = parse_args(argv)
    paper = load_paper(args.paper_csv)
    cells = load_cells(find_result_files(args.inputs))
    if args.with_published:
        cells += published_cells(paper)
    if not cells:
        log.error("no result.json under %s", ", ".join(map(str, args.inputs)))
        return 1
    settings = None if args.no_ci else report_settings(args.resamples)
    report = build_report(
        cells, args.out, paper=paper, figures=not args.no_figures, ci=not args.no_ci, settings=settings
    )
    counts = ", ".join(f"{p} {sum(c.protocol == p for c in cells)}" for p in report.files)
    print(f"[cbmir] report: {len(cells)} cells ({counts}) → {args.out / 'index.md'}")
    pooled = [s for s in report.summary if s["metric"] == "all" and s["model"] == "all"]
    if pooled and pooled[0]["n"]:
        s = pooled[0]
        print(
            f"[cbmir] vs paper: mean |Δ| {s['mean_abs_diff']:.2f} over {s['n']} values, "
            f"{s['within_1']} within 1 point, {s['within_3']} within 3 ({args.out / PAPER_PROTOCOL / 'comparison.md'})"
        )
    if args.wandb:
        mode = args.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
        if mode != "disabled":
            where = log_to_wandb(
                report,
                project=args.wandb_project,
                entity=args.wandb_entity,
                mode=mode,
                name=args.wandb_name,
                group=args.wandb_group,
                wandb_dir=args.wandb_dir,
            )
            print(f"[cbmir] W&B ({mode}): {where}" + ("  (wandb sync it to upload)" if mode == "offline" else ""))
    return 0
