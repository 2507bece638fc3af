"""Find the ``result.json`` files under the report's inputs and load them as cells.

An input is a ``result.json``, a folder holding results (an output dir, a result folder), or a Hydra
multirun folder, whose jobs are mapped to their cells' folders through :func:`cbmir.layout.cell_dir`
(the one definition of the result path, torch-free).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from cbmir.layout import cell_dir
from cbmir.report.cells import Cell, cell_from_result
from cbmir.report.naming import sort_cells

log = logging.getLogger(__name__)


def find_result_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Every ``result.json`` under the inputs (files, output dirs, result folders, Hydra multirun dirs), once each."""
    found: dict[Path, None] = {}
    for entry in inputs:
        p = Path(entry)
        if p.is_file():
            files = [p] if p.name == "result.json" else []
            if not files:
                log.warning("%s is not a result.json; ignored", p)
        elif p.is_dir():
            files = sorted(p.rglob("result.json")) or results_of_multirun(p)
        else:
            log.warning("%s does not exist; ignored", p)
            files = []
        for f in files:
            found.setdefault(f.resolve(), None)
    return list(found)


def results_of_multirun(folder: Path) -> list[Path]:
    """A Hydra multirun folder holds job configs, not results: map each job to its cell's result file."""
    configs = sorted(folder.rglob(".hydra/config.yaml"))
    if not configs:
        return []
    from omegaconf import OmegaConf

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
