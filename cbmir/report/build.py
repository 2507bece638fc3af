"""Write a report folder: ``results.csv`` and ``index.md`` at the top, one folder per protocol.

Each protocol's folder holds its ``results.csv``, ``tables.md``, ``figures/`` and, for protocol
``paper``, the comparison with the published numbers. Protocols are never mixed in one table or figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbmir.files import atomic_write_text
from cbmir.layout import safe_name
from cbmir.report.cells import Cell
from cbmir.report.figures import write_figures
from cbmir.report.naming import PAPER_PROTOCOL, dataset_order, model_order, protocol_order, sort_cells
from cbmir.report.paper import (
    COMPARISON_COLUMNS,
    PaperNumbers,
    compare_with_paper,
    comparison_markdown,
    summarize_comparison,
)
from cbmir.report.tables import result_columns, result_rows, tables_markdown, write_csv


@dataclass
class Report:
    """What :func:`build_report` wrote, per protocol, for the console and W&B."""

    out: Path
    cells: list[Cell]
    files: dict[str, list[Path]] = field(default_factory=dict)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)


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
        folder = out / safe_name(protocol)
        files = [write_csv(folder / "results.csv", result_columns(pcells), result_rows(pcells))]
        files.append(_write_text(folder / "tables.md", tables_markdown(pcells, protocol)))
        rows: list[dict[str, Any]] = []
        if protocol == PAPER_PROTOCOL:
            rows = compare_with_paper(pcells, paper)
            summary = summarize_comparison(rows)
            report.comparison, report.summary = rows, summary
            files.append(write_csv(folder / "comparison.csv", COMPARISON_COLUMNS, rows))
            files.append(
                write_csv(folder / "comparison_summary.csv", list(summary[0]) if summary else ["model"], summary)
            )
            files.append(_write_text(folder / "comparison.md", comparison_markdown(rows, summary)))
        if figures:
            files += write_figures(pcells, rows, folder / "figures")
        report.files[protocol] = files
        index += _index_section(protocol, pcells, files, out)
    _write_text(out / "index.md", "\n".join(index))
    return report


def _index_section(protocol: str, cells: Sequence[Cell], files: Sequence[Path], out: Path) -> list[str]:
    """One protocol's lines of ``index.md``: what it covers, then a link to each file."""
    models = model_order(c.model for c in cells)
    datasets = dataset_order(c.dataset for c in cells)
    lines = [
        f"## protocol `{protocol}`: {len(cells)} cells",
        "",
        f"{len(models)} models ({', '.join(models)}), {len(datasets)} datasets ({', '.join(datasets)}), "
        f"sizes {sorted({c.size for c in cells})}.",
        "",
    ]
    lines += [f"- [{f.relative_to(out)}]({f.relative_to(out).as_posix()})" for f in files]
    return lines + [""]


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
