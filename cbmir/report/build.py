"""Write a report folder: ``results.csv`` and ``index.md`` at the top, one folder per protocol.

Each protocol's folder holds its ``results.csv``, ``tables.md`` (values with intervals and significance
marks), ``pairwise.md|.csv``, ``per_class.md``, ``figures/`` and, for protocol ``paper``, the comparison
with the published numbers. Protocols are never mixed in one table or figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbmir.layout import safe_name
from cbmir.report.cells import Cell
from cbmir.report.figures import write_figures
from cbmir.report.naming import PAPER_PROTOCOL, dataset_order, model_order, protocol_order, sort_cells
from cbmir.report.pairwise import PAIRWISE_COLUMNS, pairwise_markdown, pairwise_rows
from cbmir.report.paper import (
    COMPARISON_COLUMNS,
    PaperNumbers,
    compare_with_paper,
    comparison_markdown,
    summarize_comparison,
)
from cbmir.report.per_class import per_class_markdown
from cbmir.report.significance import Significance, column_statistics, report_settings
from cbmir.report.stat_figures import write_stat_figures
from cbmir.report.tables import result_columns, result_rows, tables_markdown, write_csv
from cbmir.report.tradeoff import write_tradeoffs
from cbmir.safety.files import atomic_write_text
from cbmir.stats.bootstrap import StatsSettings


@dataclass
class Report:
    """What :func:`build_report` wrote, per protocol, for the console and W&B."""

    out: Path
    cells: list[Cell]
    files: dict[str, list[Path]] = field(default_factory=dict)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    #: per protocol: intervals and paired comparisons (absent with ``ci=False``)
    significance: dict[str, Significance] = field(default_factory=dict)
    #: per protocol: the rows of pairwise.csv
    pairwise: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def build_report(
    cells: Sequence[Cell],
    out: str | Path,
    *,
    paper: PaperNumbers | None = None,
    figures: bool = True,
    ci: bool = True,
    settings: StatsSettings | None = None,
) -> Report:
    """Write results.csv and index.md at ``out`` and one folder of tables, comparisons and figures per protocol.

    With ``ci`` (default), every value gets its bootstrap interval and the tables their significance marks,
    from the cells' per-query scores (``settings``: default ``conf/stats/default.yaml``); ``ci=False`` writes
    the paper's shape (values only) and no pairwise tables or forest plots, as does a protocol none of whose
    cells has an interval (``published``, results without per-query scores).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = sort_cells(cells)
    report = Report(out, cells)
    protocols = protocol_order(c.protocol for c in cells)
    by_protocol = {p: [c for c in cells if c.protocol == p] for p in protocols}
    if ci:
        settings = settings or report_settings()
        for p in protocols:  # a protocol without any interval (the published numbers) keeps the paper's shape
            significance = column_statistics(by_protocol[p], settings)
            if any(significance.intervals.values()):
                report.significance[p] = significance
    rows = [r for p in protocols for r in result_rows(by_protocol[p], report.significance.get(p))]
    write_csv(out / "results.csv", result_columns(cells, intervals=bool(report.significance)), rows)
    index = [
        "# cbmir report",
        "",
        f"{len(cells)} cells. `results.csv`: every cell of every protocol, one row each.",
        "",
    ]
    for protocol in protocols:
        pcells, significance = by_protocol[protocol], report.significance.get(protocol)
        folder = out / safe_name(protocol)
        files = [
            write_csv(folder / "results.csv", result_columns(pcells, intervals=ci), result_rows(pcells, significance))
        ]
        files.append(_write_text(folder / "tables.md", tables_markdown(pcells, protocol, significance)))
        if significance is not None:
            pairs = report.pairwise[protocol] = pairwise_rows(protocol, significance)
            files.append(write_csv(folder / "pairwise.csv", PAIRWISE_COLUMNS, pairs))
            files.append(_write_text(folder / "pairwise.md", pairwise_markdown(protocol, pairs, significance)))
        if per_class := per_class_markdown(pcells, protocol):
            files.append(_write_text(folder / "per_class.md", per_class))
        rows = []
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
            files += write_stat_figures(pcells, significance, folder / "figures")
        report.files[protocol] = files
        index += _index_section(protocol, pcells, files, out)
    if ci:  # hook: the zero-shot vs image-kNN table of the text protocols (cbmir.report.zeroshot)
        from cbmir.report.zeroshot import write_zeroshot

        if zeroshot := write_zeroshot(cells, out, settings or report_settings()):
            index += ["## zero-shot (a sentence) vs image kNN (an example image)", ""]
            index += [f"- [{f.name}]({f.name})" for f in zeroshot] + [""]
    tradeoffs = write_tradeoffs([c.path for c in cells if c.path is not None], out, figures=figures)
    if tradeoffs:
        index += ["## search trade-offs (exact vs approximate indexes)", ""]
        index += [f"- [{f.relative_to(out)}]({f.relative_to(out).as_posix()})" for f in tradeoffs] + [""]
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
