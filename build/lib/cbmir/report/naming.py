"""How the report orders and names things: the paper's order and display names, protocols, number format.

The study's models and datasets, in the paper's order, come from ``conf/experiment/paper.yaml``
(:func:`cbmir.layout.paper_grid`); display names from each YAML's ``label`` (:func:`cbmir.layout.label`).
Names outside the study sort after it, alphabetically, and show as their ids where they carry no label.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from cbmir.layout import label, paper_grid
from cbmir.report.cells import Cell

#: The only protocol the published numbers belong to.
PAPER_PROTOCOL = "paper"
#: Pseudo-protocol under which ``--with-published`` renders the paper's own numbers.
PUBLISHED_PROTOCOL = "published"
_PROTOCOL_ORDER = (PAPER_PROTOCOL, "standard", PUBLISHED_PROTOCOL)
#: Metric families ``<family><k><variant>`` in report order: the paper's three, then the standard protocol's.
_METRIC_FAMILIES = ("mAP@", "mMV@", "ACC@", "AP@", "P@", "R@", "nDCG@", "MRR@")
#: Metrics without a k (the standard protocol's, over the R relevant items), after the families.
_NAMED_METRICS = ("MAP@R", "R-precision")
_MACRO = "_macro"
#: Shown where a value is absent inside a cell that has others (an entirely absent cell is blank).
MISSING = "–"
#: After a value that is not significantly worse than the best of its column (paired test, corrected).
SAME_AS_BEST = "≈"


def _ordered(names: Iterable[str], order: Sequence[str]) -> list[str]:
    """The known names in the paper's order, then the others alphabetically (``+tri`` options after their base)."""

    def key(name: str) -> tuple:
        base, _, options = name.partition("+")
        return (order.index(base) if base in order else len(order), base, options)

    return sorted(set(names), key=key)


def model_order(names: Iterable[str]) -> list[str]:
    return _ordered(names, paper_grid()["model"])


def dataset_order(names: Iterable[str]) -> list[str]:
    return _ordered(names, paper_grid()["dataset"])


def protocol_order(names: Iterable[str]) -> list[str]:
    return _ordered(names, _PROTOCOL_ORDER)


def metric_order(names: Iterable[str]) -> list[str]:
    """The paper's families (mAP@k, mMV@k, ACC@k, by k), then the standard protocol's (AP@k_textbook, P@k, R@k,
    nDCG@k, MRR@k, MAP@R, R-precision), then any others alphabetically; each ``_macro`` right after its base."""

    def key(name: str) -> tuple:
        macro = name.endswith(_MACRO)
        base = name[: -len(_MACRO)] if macro else name
        for i, family in enumerate(_METRIC_FAMILIES):
            rest = base[len(family) :]
            k = rest[: len(rest) - len(rest.lstrip("0123456789"))]
            if base.startswith(family) and k:
                return (i, int(k), rest[len(k) :], macro, name)
        if base in _NAMED_METRICS:
            return (len(_METRIC_FAMILIES) + _NAMED_METRICS.index(base), 0, "", macro, name)
        return (len(_METRIC_FAMILIES) + len(_NAMED_METRICS), 0, base, macro, name)

    return sorted(set(names), key=key)


def sort_cells(cells: Iterable[Cell]) -> list[Cell]:
    """Protocol, dataset, size, model: the order of every table, CSV and comparison."""
    cells = list(cells)
    p = {n: i for i, n in enumerate(protocol_order(c.protocol for c in cells))}
    d = {n: i for i, n in enumerate(dataset_order(c.dataset for c in cells))}
    m = {n: i for i, n in enumerate(model_order(c.model for c in cells))}
    return sorted(cells, key=lambda c: (p[c.protocol], d[c.dataset], c.size, m[c.model]))


def is_3d(dataset: str) -> bool:
    return dataset.partition("+")[0].endswith("3d")


def model_label(model: str) -> str:
    return label("model", model)


def dataset_label(dataset: str) -> str:
    """The dataset's label, its 3D options kept (``SynapseMNIST3D+tri-mean``)."""
    base, plus, options = dataset.partition("+")
    return label("dataset", base) + plus + options


def is_finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (bools and None are not values)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: float | None, digits: int = 2) -> str:
    """A value at the tables' precision; :data:`MISSING` where there is none."""
    if not is_finite(value):
        return MISSING
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"
