"""The study's tables and figures, built from result folders and compared with the published numbers.

``python -m cbmir.report outputs/ --out outputs/report`` finds every ``result.json`` under its
inputs and writes, per protocol (protocols are never mixed in one table or figure):

* ``results.csv``: one row per cell, every metric, timings, embedding size, versions;
* ``tables.md``: per metric, the paper's table shape (models × datasets, the sizes in each cell,
  best per column and size in bold), the mean over 2D (and 3D) datasets and each model's average rank;
* ``comparison.md|.csv`` (protocol ``paper`` only): ours, the paper's, and the difference for every
  cell of the study, with a per-model summary; missing published cells stay missing, never zero;
* ``figures/``: heatmaps (model × dataset, a panel per size), size curves (a panel per dataset,
  a line per model) and, for ``paper``, a paper-vs-cbmir scatter.

Everything is a small pure function over :class:`Cell` records, so partial sweeps (missing cells
are blank) and the tests work on synthetic results. No pandas: the csv module and numpy suffice.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: cbmir model name -> the paper's name (explicit: the paper's rows are matched through this only).
PAPER_MODELS: dict[str, str] = {
    "vgg19": "VGG19",
    "resnet50": "ResNet50",
    "densenet121": "DenseNet121",
    "efficientnetv2_m": "EfficientNetV2M",
    "medclip": "MedCLIP",
    "biomedclip": "BiomedCLIP",
    "openclip": "OpenCLIP",
    "conch": "CONCH",
    "uni": "UNI",
}
#: cbmir dataset (MedMNIST flag) -> the paper's name, in the paper's order.
PAPER_DATASETS: dict[str, str] = {
    "breastmnist": "BreastMNIST",
    "pneumoniamnist": "PneumoniaMNIST",
    "retinamnist": "RetinaMNIST",
    "dermamnist": "DermaMNIST",
    "bloodmnist": "BloodMNIST",
    "pathmnist": "PathMNIST",
    "adrenalmnist3d": "AdrenalMNIST3D",
    "synapsemnist3d": "SynapseMNIST3D",
}
PAPER_METRICS: tuple[str, ...] = ("mAP@5", "mMV@5", "ACC@1", "ACC@3", "ACC@5")
#: The only protocol the published numbers belong to.
PAPER_PROTOCOL = "paper"
#: Pseudo-protocol under which ``--with-published`` renders the paper's own numbers.
PUBLISHED_PROTOCOL = "published"
#: The study's sizes (28 = the 28 → 32 px runs); mirrors cbmir.data, which imports torch.
SIZES_2D: tuple[int, ...] = (28, 64, 128, 224)
SIZES_3D: tuple[int, ...] = (28, 64)
PAPER_CSV = "paper_results.csv"
#: Shown where a value is absent inside a cell that has others (an entirely absent cell is blank).
MISSING = "–"
_PROTOCOL_ORDER = ("paper", "standard")
#: (dataset, size, model) in cbmir names -> the paper's metrics
PaperNumbers = dict[tuple[str, int, str], dict[str, float]]
_METRIC_FAMILIES = ("mAP@", "mMV@", "ACC@")


# --------------------------------------------------------------------------- records


@dataclass
class Cell:
    """One result: its identity, its metrics (percent) and everything else flattened for the CSV."""

    protocol: str
    dataset: str
    size: int
    model: str
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.protocol, self.dataset, self.size, self.model)


def cell_from_result(result: dict[str, Any], path: Path | None = None) -> Cell:
    """Flatten a ``result.json`` dict: nested groups become prefixed columns; config/embeddings are left out."""
    missing = [k for k in ("protocol", "dataset", "size", "model", "metrics") if k not in result]
    if missing:
        raise ValueError(f"not a cbmir result (no {', '.join(missing)})")
    info: dict[str, Any] = {}
    for name, value in result.items():
        if name in ("protocol", "dataset", "size", "model", "metrics", "config", "embeddings"):
            continue
        if isinstance(value, dict):
            prefix = {"versions": "version", "seconds": "seconds", "cached": "cached"}.get(name, name)
            info.update({f"{prefix}_{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, list):
            info[name] = value
    metrics = {str(k): float(v) for k, v in result["metrics"].items() if v is not None}
    return Cell(
        str(result["protocol"]), str(result["dataset"]), int(result["size"]), str(result["model"]), metrics, info, path
    )


def find_result_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Every ``result.json`` under the inputs (files, output dirs, result folders, Hydra multirun dirs)."""
    found: dict[Path, None] = {}
    for entry in inputs:
        p = Path(entry)
        if p.is_file():
            files = [p] if p.name == "result.json" else []
            if not files:
                log.warning("%s is not a result.json; ignored", p)
        elif p.is_dir():
            files = sorted(p.rglob("result.json")) or _results_of_multirun(p)
        else:
            log.warning("%s does not exist; ignored", p)
            files = []
        for f in files:
            found.setdefault(f.resolve(), None)
    return list(found)


def _results_of_multirun(folder: Path) -> list[Path]:
    """A Hydra multirun folder holds job configs, not results: map each job to its cell's result folder."""
    configs = sorted(folder.rglob(".hydra/config.yaml"))
    if not configs:
        return []
    from omegaconf import OmegaConf

    from cbmir.cell import cell_dir  # the one definition of the result path (imports torch: only here)

    files = []
    for config in configs:
        try:
            target = cell_dir(OmegaConf.load(config)) / "result.json"
        except Exception as exc:  # a job config of another program, or a broken one
            log.warning("%s: cannot locate its cell (%s)", config, exc)
            continue
        if target.is_file():
            files.append(target)
        else:
            log.warning(
                "%s: no result at %s (cell failed, skipped, or output_dir is relative to another cwd)",
                config.parent.parent,
                target,
            )
    return files


def load_cells(files: Iterable[Path]) -> list[Cell]:
    """Read results; unreadable files are skipped with a warning, duplicates keep the newest ``created``."""
    cells: dict[tuple, Cell] = {}
    for f in files:
        try:
            cell = cell_from_result(json.loads(Path(f).read_text()), Path(f).parent)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: skipped (%s)", f, exc)
            continue
        old = cells.get(cell.key)
        if old is not None:
            newer = str(cell.info.get("created", "")) >= str(old.info.get("created", ""))
            kept, dropped = (cell, old) if newer else (old, cell)
            log.warning(
                "cell %s found twice: keeping %s, ignoring %s", "/".join(map(str, cell.key)), kept.path, dropped.path
            )
            cell = kept
        cells[cell.key] = cell
    return sort_cells(cells.values())


# --------------------------------------------------------------------------- order and names


def _ordered(names: Iterable[str], order: Sequence[str]) -> list[str]:
    """The known names in the paper's order, then the others alphabetically (options such as ``+tri`` after their base)."""

    def key(name: str) -> tuple:
        base, _, options = name.partition("+")
        return (order.index(base) if base in order else len(order), base, options)

    return sorted(set(names), key=key)


def model_order(names: Iterable[str]) -> list[str]:
    return _ordered(names, tuple(PAPER_MODELS))


def dataset_order(names: Iterable[str]) -> list[str]:
    return _ordered(names, tuple(PAPER_DATASETS))


def protocol_order(names: Iterable[str]) -> list[str]:
    return _ordered(names, _PROTOCOL_ORDER + (PUBLISHED_PROTOCOL,))


def metric_order(names: Iterable[str]) -> list[str]:
    """mAP@k, mMV@k, ACC@k (by k) as in the paper, then any others alphabetically."""

    def key(name: str) -> tuple:
        for i, family in enumerate(_METRIC_FAMILIES):
            rest = name[len(family) :]
            if name.startswith(family) and rest.isdigit():
                return (i, int(rest), name)
        return (len(_METRIC_FAMILIES), 0, name)

    return sorted(set(names), key=key)


def sort_cells(cells: Iterable[Cell]) -> list[Cell]:
    cells = list(cells)
    p = {n: i for i, n in enumerate(protocol_order(c.protocol for c in cells))}
    d = {n: i for i, n in enumerate(dataset_order(c.dataset for c in cells))}
    m = {n: i for i, n in enumerate(model_order(c.model for c in cells))}
    return sorted(cells, key=lambda c: (p[c.protocol], d[c.dataset], c.size, m[c.model]))


def is_3d(dataset: str) -> bool:
    return dataset.partition("+")[0].endswith("3d")


def model_label(model: str) -> str:
    return PAPER_MODELS.get(model, model)


def dataset_label(dataset: str) -> str:
    base, plus, options = dataset.partition("+")
    return PAPER_DATASETS.get(base, base) + plus + options


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: float | None, digits: int = 2) -> str:
    if not _finite(value):
        return MISSING
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


# --------------------------------------------------------------------------- results.csv

_LEADING = ("protocol", "dataset", "size", "model", "k", "metric", "n_queries", "n_database", "embedding_dim")


def result_columns(cells: Sequence[Cell]) -> list[str]:
    """Identity, metrics (paper order), timings, then the rest alphabetically, versions last."""
    metrics = metric_order(m for c in cells for m in c.metrics)
    info = {k for c in cells for k in c.info} - set(_LEADING)
    seconds = sorted(k for k in info if k.startswith("seconds_"))
    versions = sorted(k for k in info if k.startswith("version_"))
    rest = sorted(info - set(seconds) - set(versions))
    return [*_LEADING, *metrics, *seconds, *rest, *versions, "path"]


def result_rows(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    return [
        {
            **c.info,
            **c.metrics,
            "protocol": c.protocol,
            "dataset": c.dataset,
            "size": c.size,
            "model": c.model,
            "path": str(c.path) if c.path else "",
        }
        for c in cells
    ]


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Floats keep full precision (Python's repr); missing values are empty fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), restval="", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


# --------------------------------------------------------------------------- tables


def _grid(cells: Sequence[Cell], value_of: Callable[[Cell], float | None]) -> dict[tuple[str, int, str], float]:
    out = {}
    for c in cells:
        v = value_of(c)
        if _finite(v):
            out[(c.dataset, c.size, c.model)] = float(v)
    return out


def _average_ranks(values: dict[str, float], higher_is_better: bool) -> dict[str, float]:
    """Rank 1 = best; ties share the mean of their ranks."""
    ordered = sorted(values, key=lambda m: -values[m] if higher_is_better else values[m])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and values[ordered[j + 1]] == values[ordered[i]]:
            j += 1
        for m in ordered[i : j + 1]:
            ranks[m] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@dataclass
class Table:
    """A paper-shaped table, kept as strings so tests and the Markdown writer read the same thing."""

    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join(["---"] + [":-:"] * (len(self.header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + self.notes if self.notes else []))

    def row(self, first: str) -> list[str]:
        """The row whose first column is ``first`` (a model's label)."""
        return next(r for r in self.rows if r[0] == first)

    def column(self, name: str) -> int:
        return self.header.index(name)


def value_table(
    cells: Sequence[Cell],
    value_of: Callable[[Cell], float | None],
    *,
    higher_is_better: bool = True,
    digits: int = 2,
    ranks: bool = True,
    means: bool = True,
) -> Table:
    """Rows = models, columns = datasets, each cell its values across sizes (``83.18 / 85.45 / …``).

    The best value of each (dataset, size) is bold (ties at the shown precision all bold). The mean
    over 2D (3D) datasets at a size only counts the datasets that have that size in this table, and is
    left out for a model that misses one of them, so every mean in a column averages the same datasets.
    The average rank is over the (dataset, size) columns a model has, with their count beside it.
    """
    grid = _grid(cells, value_of)
    models = model_order(m for _, _, m in grid)
    datasets = dataset_order(d for d, _, _ in grid)
    sizes = {d: sorted({s for dd, s, _ in grid if dd == d}) for d in datasets}
    better = max if higher_is_better else min

    def best_of(column: dict[str, float]) -> float | None:
        return better(round(v, digits) for v in column.values()) if column else None

    def render(
        model: str, size_list: list[int], value: Callable[[str, int], float | None], best: dict[int, float | None]
    ) -> str:
        values = [value(model, s) for s in size_list]
        if not any(_finite(v) for v in values):
            return ""
        parts = []
        for s, v in zip(size_list, values, strict=True):
            text = _fmt(v, digits)
            parts.append(f"**{text}**" if _finite(v) and best[s] is not None and round(v, digits) == best[s] else text)
        return " / ".join(parts)

    header = ["Model"] + [dataset_label(d) for d in datasets]
    size_row = ["*size (px)*"] + [" / ".join(map(str, sizes[d])) for d in datasets]
    columns = {d: {s: {m: grid[(d, s, m)] for m in models if (d, s, m) in grid} for s in sizes[d]} for d in datasets}
    body = {
        m: [
            render(m, sizes[d], lambda mm, s, d=d: grid.get((d, s, mm)), {s: best_of(columns[d][s]) for s in sizes[d]})
            for d in datasets
        ]
        for m in models
    }
    notes = []

    if means:
        for name, group in (("2D", [d for d in datasets if not is_3d(d)]), ("3D", [d for d in datasets if is_3d(d)])):
            if len(group) < 2:
                continue
            group_sizes = sorted({s for d in group for s in sizes[d]})
            mean: dict[tuple[str, int], float] = {}
            for s in group_sizes:
                members = [d for d in group if s in sizes[d]]
                for m in models:
                    vals = [grid.get((d, s, m)) for d in members]
                    if all(_finite(v) for v in vals):
                        mean[(m, s)] = float(np.mean(vals))
            best = {s: best_of({m: mean[(m, s)] for m in models if (m, s) in mean}) for s in group_sizes}
            header.append(f"mean {name}")
            size_row.append(" / ".join(map(str, group_sizes)))
            for m in models:
                body[m].append(render(m, group_sizes, lambda mm, s, mean=mean: mean.get((mm, s)), best))
            notes.append(
                f"mean {name}: over {', '.join(dataset_label(d) for d in group)} "
                "(at each size, the datasets that have it); blank where a model misses one of them."
            )

    if ranks:
        total: dict[str, list[float]] = {m: [] for m in models}
        for d in datasets:
            for s in sizes[d]:
                for m, r in _average_ranks(columns[d][s], higher_is_better).items():
                    total[m].append(r)
        header.append("avg rank (cells)")
        size_row.append("")
        for m in models:
            body[m].append(f"{np.mean(total[m]):.2f} ({len(total[m])})" if total[m] else "")
        notes.append("avg rank: mean rank among the models present in each (dataset, size) column, 1 = best.")
    rows = [size_row] + [[model_label(m)] + body[m] for m in models]
    return Table(header, rows, notes)


def metric_table(cells: Sequence[Cell], metric: str, **kwargs: Any) -> Table:
    return value_table(cells, lambda c: c.metrics.get(metric), **kwargs)


def coverage(cells: Sequence[Cell]) -> tuple[int, list[tuple[str, int, str]]]:
    """The cells missing from the grid of the models, datasets and sizes seen (3D datasets: 28 and 64 only)."""
    models = model_order(c.model for c in cells)
    datasets = dataset_order(c.dataset for c in cells)
    seen_sizes = {c.size for c in cells}
    have = {(c.dataset, c.size, c.model) for c in cells}
    expected = [
        (d, s, m)
        for d in datasets
        for s in sorted(seen_sizes)
        if not is_3d(d) or s in SIZES_3D or any(c.dataset == d and c.size == s for c in cells)
        for m in models
    ]
    return len(expected), [e for e in expected if e not in have]


def tables_markdown(cells: Sequence[Cell], protocol: str) -> str:
    """``tables.md`` of one protocol: coverage, one table per metric, then the time per cell."""
    cells = [c for c in cells if c.protocol == protocol]
    n_expected, missing = coverage(cells)
    out = [
        f"# Retrieval results, protocol `{protocol}`",
        "",
        f"{len(cells)} cells ({n_expected - len(missing)} of the {n_expected} model × dataset × size combinations seen). "
        "Each entry lists the values across sizes in the order of the *size* row (28 = MedMNIST's 28 px files, "
        "which the study's protocols upsample to 32 px); "
        f"**bold** = best of its dataset and size; {MISSING} = not run.",
        "",
    ]
    if missing:
        shown = ", ".join(f"{model_label(m)}/{dataset_label(d)}/{s}" for d, s, m in missing[:40])
        out += [f"Missing: {shown}{' …' if len(missing) > 40 else ''}", ""]
    for metric in metric_order(m for c in cells for m in c.metrics):
        out += [f"## {metric} (%)", "", metric_table(cells, metric).markdown(), ""]
    if any(_finite(c.info.get("seconds_total")) for c in cells):
        table = value_table(
            cells, lambda c: c.info.get("seconds_total"), higher_is_better=False, digits=1, ranks=False, means=False
        )
        out += ["## Time per cell (s, extraction + search; cached embeddings make it short)", "", table.markdown(), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- the paper


def load_paper(path: str | Path | None = None) -> PaperNumbers:
    """The published numbers keyed by cbmir names ``(dataset, size, model)``; unknown names are an error."""
    text = Path(path).read_text() if path else (resources.files("cbmir") / "resources" / PAPER_CSV).read_text()
    datasets = {v: k for k, v in PAPER_DATASETS.items()}
    models = {v: k for k, v in PAPER_MODELS.items()}
    reader = csv.DictReader(text.splitlines())
    expected = ["size", "dataset", "model", *PAPER_METRICS]
    if reader.fieldnames != expected:
        raise ValueError(f"{path or PAPER_CSV}: columns {reader.fieldnames}, expected {expected}")
    out: dict[tuple[str, int, str], dict[str, float]] = {}
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
    return [(d, s, m) for d in PAPER_DATASETS for s in (SIZES_3D if is_3d(d) else SIZES_2D) for m in PAPER_MODELS]


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
            if not _finite(ours):
                continue
            theirs = published.get(metric)
            diff = round(round(ours, 2) - theirs, 2) if theirs is not None else None
            rows.append(
                {
                    "protocol": c.protocol,
                    "dataset": c.dataset,
                    "size": c.size,
                    "model": c.model,
                    "metric": metric,
                    "cbmir": ours,
                    "paper": theirs,
                    "diff": diff,
                }
            )
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
    out = [
        "# cbmir vs the paper (protocol `paper`)",
        "",
        "Published: Mahbod et al., arXiv 2409.09430, supplementary tables S.1–S.4 (`cbmir/resources/paper_results.csv`). "
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
            _fmt(s["mean_abs_diff"]),
            _fmt(s["mean_diff"]),
            _fmt(s["max_abs_diff"]),
            f"{s['within_1']}/{s['n']}",
            f"{s['within_3']}/{s['n']}",
            str(s["missing_paper"]),
        ]
        cols += [_fmt((per_metric.get((s["model"], m)) or {}).get("mean_abs_diff")) for m in PAPER_METRICS]
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
            entries.append(f"{r['cbmir']:.2f} / {_fmt(r['paper'])} ({diff})")
        out.append("| " + " | ".join([model_label(m), dataset_label(d), str(s), *entries]) + " |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float):
    """A Figure on the Agg canvas without pyplot: no global backend state, safe in any process."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def model_colors(models: Sequence[str]) -> dict[str, Any]:
    """Stable colours: the paper's 9 models keep theirs in every figure, others follow."""
    from matplotlib import colormaps

    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    colors, extra = {}, 0
    for m in models:
        if m in PAPER_MODELS:
            colors[m] = tab10(list(PAPER_MODELS).index(m))
        else:
            colors[m] = tab20((2 * extra + 1) % 20)
            extra += 1
    return colors


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "", text.replace("@", ""))


def heatmap_figure(cells: Sequence[Cell], metric: str, path: Path) -> Path | None:
    """Model × dataset heatmaps of one metric, a panel per size, one colour scale; missing cells blank."""
    grid = _grid(cells, lambda c: c.metrics.get(metric))
    if not grid:
        return None
    models = model_order(m for _, _, m in grid)
    datasets = dataset_order(d for d, _, _ in grid)
    sizes = sorted({s for _, s, _ in grid})
    values = np.array(list(grid.values()))
    vmin, vmax = float(values.min()), float(values.max())
    vmax = vmax if vmax > vmin else vmin + 1.0
    ncols = min(2, len(sizes))
    nrows = math.ceil(len(sizes) / ncols)
    fig = _figure(ncols * (1.6 + 0.85 * len(datasets)), nrows * (1.2 + 0.38 * len(models)) + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="white")
    image = None
    for ax, size in zip(axes, sizes, strict=False):
        mat = np.full((len(models), len(datasets)), np.nan)
        for i, m in enumerate(models):
            for j, d in enumerate(datasets):
                mat[i, j] = grid.get((d, size, m), np.nan)
        image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(models)):
            for j in range(len(datasets)):
                if np.isfinite(mat[i, j]):
                    light = (mat[i, j] - vmin) / (vmax - vmin) > 0.55
                    ax.text(
                        j,
                        i,
                        f"{mat[i, j]:.1f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if light else "white",
                    )
        ax.set_xticks(range(len(datasets)), [dataset_label(d) for d in datasets], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), [model_label(m) for m in models], fontsize=8)
        ax.set_title(f"{size} px", fontsize=10)
    for ax in axes[len(sizes) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes[: len(sizes)].tolist(), shrink=0.8, label=f"{metric} (%)")
    fig.suptitle(f"{metric} (%) by model and dataset")
    return _save(fig, path)


def size_curves_figure(cells: Sequence[Cell], metric: str, path: Path) -> Path | None:
    """Metric vs size, a line per model, a panel per dataset (as the paper's figures); gaps stay gaps."""
    grid = _grid(cells, lambda c: c.metrics.get(metric))
    if not grid:
        return None
    models = model_order(m for _, _, m in grid)
    datasets = dataset_order(d for d, _, _ in grid)
    colors = model_colors(models)
    ncols = min(4, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = _figure(3.2 * ncols + 1.8, 2.7 * nrows + 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, d in zip(axes, datasets, strict=False):
        sizes = sorted({s for dd, s, _ in grid if dd == d})
        for m in models:
            ys = np.array([grid.get((d, s, m), np.nan) for s in sizes])
            if np.isfinite(ys).any():
                ax.plot(sizes, ys, marker="o", markersize=4, color=colors[m], label=model_label(m))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(dataset_label(d), fontsize=10)
        ax.set_xlabel("size (px)", fontsize=8)
        ax.set_ylabel(f"{metric} (%)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    _legend(fig, axes[: len(datasets)], [model_label(m) for m in models])
    fig.suptitle(f"{metric} (%) vs image size")
    return _save(fig, path)


def paper_scatter_figure(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """cbmir (y) against the paper (x) per metric, a colour per model, the diagonal = exact reproduction."""
    pairs = [r for r in rows if r["paper"] is not None]
    if not pairs:
        return None
    metrics = [m for m in PAPER_METRICS if any(r["metric"] == m for r in pairs)]
    models = model_order(r["model"] for r in pairs)
    colors = model_colors(models)
    ncols = min(3, len(metrics) + 1)  # the last slot holds the legend
    nrows = math.ceil((len(metrics) + 1) / ncols)
    fig = _figure(3.3 * ncols, 3.3 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        sel = [r for r in pairs if r["metric"] == metric]
        xs = np.array([r["paper"] for r in sel])
        ys = np.array([r["cbmir"] for r in sel])
        lo, hi = float(min(xs.min(), ys.min())) - 2, float(max(xs.max(), ys.max())) + 2
        ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=1, zorder=1)
        ax.fill_between([lo, hi], [lo - 3, hi - 3], [lo + 3, hi + 3], color="0.85", zorder=0, label="±3 points")
        for m in models:
            sm = [r for r in sel if r["model"] == m]
            if sm:
                ax.scatter(
                    [r["paper"] for r in sm],
                    [r["cbmir"] for r in sm],
                    s=16,
                    color=colors[m],
                    label=model_label(m),
                    zorder=2,
                    edgecolors="none",
                )
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        mad = float(np.mean(np.abs(ys.round(2) - xs)))
        ax.set_title(f"{metric}: mean |Δ| {mad:.2f} (n={len(sel)})", fontsize=9)
        ax.set_xlabel("paper (%)", fontsize=8)
        ax.set_ylabel("cbmir (%)", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    _legend(
        axes[len(metrics)],
        axes[: len(metrics)],
        [model_label(m) for m in models] + ["±3 points"],
        loc="center",
        frameon=False,
    )
    fig.suptitle("cbmir (y) vs the paper (x), protocol paper; diagonal = exact reproduction")
    return _save(fig, path)


def _legend(target, axes: Iterable, order: Sequence[str], **kwargs: Any) -> None:
    """One legend (on a figure or a spare panel) for all panels, in model order, whichever panel drew each model."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    labels = [label for label in order if label in handles]
    target.legend(
        [handles[label] for label in labels], labels, **{"loc": "outside right center", "fontsize": 8, **kwargs}
    )


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What :func:`build_report` wrote, per protocol, for the console and W&B."""

    out: Path
    cells: list[Cell]
    files: dict[str, list[Path]] = field(default_factory=dict)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)


def _folder_name(protocol: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", protocol)


def build_report(
    cells: Sequence[Cell], out: str | Path, *, paper: PaperNumbers | None = None, figures: bool = True
) -> Report:
    """Write results.csv and index.md at ``out`` and one folder of tables, comparison and figures per protocol."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = sort_cells(cells)
    report = Report(out, cells)
    write_csv(out / "results.csv", result_columns(cells), result_rows(cells))
    index = [
        "# cbmir report",
        "",
        f"{len(cells)} cells. `results.csv`: every cell of every protocol, one row each.",
        "",
    ]
    for protocol in protocol_order(c.protocol for c in cells):
        pcells = [c for c in cells if c.protocol == protocol]
        folder = out / _folder_name(protocol)
        files = [write_csv(folder / "results.csv", result_columns(pcells), result_rows(pcells))]
        tables = folder / "tables.md"
        tables.write_text(tables_markdown(pcells, protocol))
        files.append(tables)
        rows: list[dict[str, Any]] = []
        if protocol == PAPER_PROTOCOL:
            rows = compare_with_paper(pcells, paper)
            summary = summarize_comparison(rows)
            report.comparison, report.summary = rows, summary
            columns = ["protocol", "dataset", "size", "model", "metric", "cbmir", "paper", "diff"]
            files.append(write_csv(folder / "comparison.csv", columns, rows))
            files.append(
                write_csv(folder / "comparison_summary.csv", list(summary[0]) if summary else ["model"], summary)
            )
            (folder / "comparison.md").write_text(comparison_markdown(rows, summary))
            files.append(folder / "comparison.md")
        if figures:
            fig_dir = folder / "figures"
            for stale in fig_dir.glob("*.png") if fig_dir.is_dir() else []:
                stale.unlink()  # a metric gone from the inputs must not leave its old figure behind
            for metric in metric_order(m for c in pcells for m in c.metrics):
                for make, stem in ((heatmap_figure, "heatmap"), (size_curves_figure, "sizes")):
                    written = make(pcells, metric, fig_dir / f"{stem}_{_slug(metric)}.png")
                    if written:
                        files.append(written)
            if rows:
                written = paper_scatter_figure(rows, fig_dir / "paper_vs_cbmir.png")
                if written:
                    files.append(written)
        report.files[protocol] = files
        models = model_order(c.model for c in pcells)
        datasets = dataset_order(c.dataset for c in pcells)
        index += [
            f"## protocol `{protocol}`: {len(pcells)} cells",
            "",
            f"{len(models)} models ({', '.join(models)}), {len(datasets)} datasets ({', '.join(datasets)}), "
            f"sizes {sorted({c.size for c in pcells})}.",
            "",
        ]
        index += [f"- [{f.relative_to(out)}]({f.relative_to(out).as_posix()})" for f in files]
        index.append("")
    (out / "index.md").write_text("\n".join(index))
    return report


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
            columns = result_columns(pcells)
            data = [[_wandb_value(row.get(c)) for c in columns] for row in result_rows(pcells)]
            payload[f"{protocol}/results"] = wandb.Table(columns=columns, data=data)
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


# --------------------------------------------------------------------------- command line


def default_output_dir() -> Path:
    """``paths.output_dir`` of the config tree (conf/paths/default.yaml), ``outputs`` if it cannot be read."""
    conf = Path(os.environ.get("CBMIR_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))
    try:
        from omegaconf import OmegaConf

        return Path(str(OmegaConf.load(conf / "paths" / "default.yaml").output_dir))
    except Exception:
        return Path("outputs")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    output_dir = default_output_dir()
    p = argparse.ArgumentParser(
        prog="python -m cbmir.report",
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
    logging.basicConfig(level=logging.WARNING, format="cbmir.report: %(levelname)s: %(message)s")
    args = parse_args(argv)
    paper = load_paper(args.paper_csv)
    cells = load_cells(find_result_files(args.inputs))
    if args.with_published:
        cells += published_cells(paper)
    if not cells:
        print(f"cbmir: error: no result.json under {', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 1
    report = build_report(cells, args.out, paper=paper, figures=not args.no_figures)
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


if __name__ == "__main__":
    sys.exit(main())
