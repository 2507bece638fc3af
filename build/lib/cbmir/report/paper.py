"""The published numbers (``cbmir/resources/paper_results.csv``) and cbmir's results set beside them.

The paper's rows are matched only to the study's models and datasets (``conf/experiment/paper.yaml``),
through their YAML ``label`` (the paper's spelling): an unknown name in the CSV is an error, never a guess.
``comparison.md|.csv`` and ``comparison_summary.csv`` of protocol ``paper`` are built here.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.layout import SIZES_3D, label, paper_grid
from cbmir.report.cells import Cell
from cbmir.report.naming import (
    MISSING,
    PAPER_PROTOCOL,
    PUBLISHED_PROTOCOL,
    dataset_label,
    fmt,
    is_3d,
    is_finite,
    model_label,
    model_order,
    sort_cells,
)

PAPER_METRICS: tuple[str, ...] = ("mAP@5", "mMV@5", "ACC@1", "ACC@3", "ACC@5")
PAPER_CSV = "paper_results.csv"
#: (dataset, size, model) in cbmir names -> the paper's metrics
PaperNumbers = dict[tuple[str, int, str], dict[str, float]]
#: The columns of comparison.csv (and the keys of a comparison row).
COMPARISON_COLUMNS: tuple[str, ...] = ("protocol", "dataset", "size", "model", "metric", "cbmir", "paper", "diff")


def load_paper(path: str | Path | None = None) -> PaperNumbers:
    """The published numbers keyed by cbmir names ``(dataset, size, model)``; unknown names are an error."""
    text = Path(path).read_text() if path else (resources.files("cbmir") / "resources" / PAPER_CSV).read_text()
    grid = paper_grid()
    datasets = {label("dataset", d): d for d in grid["dataset"]}
    models = {label("model", m): m for m in grid["model"]}
    reader = csv.DictReader(text.splitlines())
    expected = ["size", "dataset", "model", *PAPER_METRICS]
    if reader.fieldnames != expected:
        raise ValueError(f"{path or PAPER_CSV}: columns {reader.fieldnames}, expected {expected}")
    out: PaperNumbers = {}
    for line, row in enumerate(reader, start=2):
        if row["dataset"] not in datasets or row["model"] not in models:
            raise ValueError(
                f"{path or PAPER_CSV}:{line}: unknown dataset or model {row['dataset']!r}/{row['model']!r}"
            )
        key = (datasets[row["dataset"]], int(row["size"]), models[row["model"]])
        out[key] = {m: float(row[m]) for m in PAPER_METRICS if row[m].strip()}
    return out


def study_cells() -> list[tuple[str, int, str]]:
    """The study's grid: 9 models × (6 2D datasets × 4 sizes + 2 3D datasets × 2 sizes) = 252 cells."""
    grid = paper_grid()
    return [
        (d, s, m) for d in grid["dataset"] for s in grid["size"] if not is_3d(d) or s in SIZES_3D for m in grid["model"]
    ]


def published_cells(paper: PaperNumbers | None = None) -> list[Cell]:
    """The paper's numbers as cells of the pseudo-protocol ``published``, to render them like ours."""
    paper = load_paper() if paper is None else paper
    return sort_cells(Cell(PUBLISHED_PROTOCOL, d, s, m, dict(v)) for (d, s, m), v in paper.items())


def compare_with_paper(cells: Sequence[Cell], paper: PaperNumbers | None = None) -> list[dict[str, Any]]:
    """One row per (cell of the study run under ``paper``, paper metric we have): ours, the paper's, Δ.

    Δ = ours rounded to 2 decimals (the paper's precision) − the paper's value, so a printed match
    is Δ = 0. A cell the paper lost (MedCLIP/BreastMNIST/64) has ``paper`` and ``diff`` None.
    """
    paper = load_paper() if paper is None else paper
    grid = set(study_cells())
    rows = []
    for c in sort_cells(cells):
        if c.protocol != PAPER_PROTOCOL or (c.dataset, c.size, c.model) not in grid:
            continue
        published = paper.get((c.dataset, c.size, c.model), {})
        for metric in PAPER_METRICS:
            ours = c.metrics.get(metric)
            if not is_finite(ours):
                continue
            theirs = published.get(metric)
            diff = round(round(ours, 2) - theirs, 2) if theirs is not None else None
            values = (c.protocol, c.dataset, c.size, c.model, metric, ours, theirs, diff)
            rows.append(dict(zip(COMPARISON_COLUMNS, values, strict=True)))
    return rows


def summarize_comparison(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model (then all models) and per metric (then ``all``): n, mean |Δ|, mean Δ, max |Δ|, within 1 and 3."""
    out = []
    models = model_order(r["model"] for r in rows)
    for model in [*models, "all"] if models else []:
        for metric in [*PAPER_METRICS, "all"]:
            sel = [r for r in rows if model in ("all", r["model"]) and metric in ("all", r["metric"])]
            if not sel:
                continue
            diffs = np.array([r["diff"] for r in sel if r["diff"] is not None], dtype=float)
            n = len(diffs)
            out.append(
                {
                    "model": model,
                    "metric": metric,
                    "n": n,
                    "cells": len({(r["dataset"], r["size"], r["model"]) for r in sel}),
                    "missing_paper": sum(r["paper"] is None for r in sel),
                    "mean_abs_diff": round(float(np.abs(diffs).mean()), 4) if n else None,
                    "mean_diff": round(float(diffs.mean()), 4) if n else None,
                    "max_abs_diff": round(float(np.abs(diffs).max()), 4) if n else None,
                    "within_1": int((np.abs(diffs) <= 1.0 + 1e-9).sum()),
                    "within_3": int((np.abs(diffs) <= 3.0 + 1e-9).sum()),
                }
            )
    return out


def comparison_markdown(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> str:
    """``comparison.md``: the per-model summary, then every cell as ``cbmir / paper (Δ)``."""
    out = [
        "# cbmir vs the paper (protocol `paper`)",
        "",
        "Published: Mahbod et al., arXiv 2409.09430, supplementary tables S.1–S.4 "
        "(`cbmir/resources/paper_results.csv`). "
        "Δ = cbmir (rounded to 2 decimals) − paper, in percentage points; "
        f"{MISSING} = the paper has no value (MedCLIP/BreastMNIST/64 is missing from the source). "
        "CNN rows use timm's PyTorch weights where the paper used Keras', so small deltas are expected there.",
        "",
    ]
    if not rows:
        return "\n".join(out + ["No cell of the study was run under protocol `paper`."]) + "\n"
    pooled = [s for s in summary if s["metric"] == "all"]
    per_metric = {(s["model"], s["metric"]): s for s in summary}
    header = [
        "Model",
        "cells",
        "values",
        "mean abs Δ",
        "mean Δ",
        "max abs Δ",
        "within 1",
        "within 3",
        "no paper value",
        *[f"abs Δ {m}" for m in PAPER_METRICS],
    ]
    lines = ["## Summary per model", "", "| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
    for s in pooled:
        name = "**all models**" if s["model"] == "all" else model_label(s["model"])
        cols = [
            str(s["cells"]),
            str(s["n"]),
            fmt(s["mean_abs_diff"]),
            fmt(s["mean_diff"]),
            fmt(s["max_abs_diff"]),
            f"{s['within_1']}/{s['n']}",
            f"{s['within_3']}/{s['n']}",
            str(s["missing_paper"]),
        ]
        cols += [fmt((per_metric.get((s["model"], m)) or {}).get("mean_abs_diff")) for m in PAPER_METRICS]
        lines.append("| " + " | ".join([name] + cols) + " |")
    out += lines + ["", "## Every cell: cbmir / paper (Δ)", ""]
    by_cell: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_cell.setdefault((r["dataset"], r["size"], r["model"]), {})[r["metric"]] = r
    header = ["Model", "Dataset", "Size", *PAPER_METRICS]
    out += ["| " + " | ".join(header) + " |", "|---|---|--:" + "|:-:" * len(PAPER_METRICS) + "|"]
    for (d, s, m), metrics in by_cell.items():
        entries = []
        for metric in PAPER_METRICS:
            r = metrics.get(metric)
            if r is None:
                entries.append("")
                continue
            diff = f"{r['diff']:+.2f}" if r["diff"] is not None else MISSING
            entries.append(f"{r['cbmir']:.2f} / {fmt(r['paper'])} ({diff})")
        out.append("| " + " | ".join([model_label(m), dataset_label(d), str(s), *entries]) + " |")
    return "\n".join(out) + "\n"
