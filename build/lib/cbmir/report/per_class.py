"""``per_class.md``: each metric's mean over the queries of each class (result.json ``per_class``).

Per metric and dataset: rows are models, columns the dataset's classes (MedMNIST's label ids and
names) and the macro average, each entry the values across sizes as in ``tables.md``; the best of each
class and size is bold. Multi-label datasets count a query in every class it carries (``none``: no label).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import cache

from cbmir.report.cells import Cell
from cbmir.report.naming import (
    MISSING,
    dataset_label,
    dataset_order,
    fmt,
    is_finite,
    metric_order,
    model_label,
    model_order,
)


@cache
def class_names(dataset: str) -> dict[str, str]:
    """MedMNIST's class names of a dataset (label id -> name); ``{}`` where unknown.

    Read from the medmnist package's ``info.py`` alone: importing the package would import torch.
    """
    try:
        spec = importlib.util.find_spec("medmnist")
        if spec is None or not spec.submodule_search_locations:
            return {}
        path = f"{list(spec.submodule_search_locations)[0]}/info.py"
        info_spec = importlib.util.spec_from_file_location("_cbmir_medmnist_info", path)
        module = importlib.util.module_from_spec(info_spec)
        info_spec.loader.exec_module(module)
        return {str(k): str(v) for k, v in module.INFO[dataset.partition("+")[0]]["label"].items()}
    except Exception:  # no medmnist, another layout, a dataset it does not know: ids only
        return {}


def _class_key(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def per_class_markdown(cells: Sequence[Cell], protocol: str, digits: int = 2) -> str:
    """The per-class tables of one protocol's cells (empty string when no cell stores per-class means)."""
    cells = [c for c in cells if c.per_class]
    if not cells:
        return ""
    out = [
        f"# Per-class results, protocol `{protocol}`",
        "",
        "Each metric's mean over the queries of one class (result.json `per_class`), in percent; entries list the "
        "sizes of the *size* row; **bold** = best of its class and size; `macro` = the mean over classes "
        f"(the `_macro` metric, where the protocol reports it); {MISSING} = not run.",
        "",
    ]
    for metric in metric_order(m for c in cells for m in c.per_class):
        out += [f"## {metric} (%)", ""]
        for dataset in dataset_order(c.dataset for c in cells):
            dcells = [c for c in cells if c.dataset == dataset and metric in c.per_class]
            if dcells:
                out += [f"### {dataset_label(dataset)}", "", _dataset_table(dcells, dataset, metric, digits), ""]
    return "\n".join(out)


def _dataset_table(cells: Sequence[Cell], dataset: str, metric: str, digits: int) -> str:
    sizes = sorted({c.size for c in cells})
    models = model_order(c.model for c in cells)
    value = {(c.model, c.size, k): v for c in cells for k, v in c.per_class[metric].items()}
    value |= {(c.model, c.size, "macro"): c.metrics[f"{metric}_macro"] for c in cells if f"{metric}_macro" in c.metrics}
    classes = sorted({k for c in cells for k in c.per_class[metric]}, key=_class_key)
    columns = classes + (["macro"] if any(k == "macro" for _, _, k in value) else [])
    names = class_names(dataset)
    header = ["Model"] + [f"{k}: {names[k]}" if k in names else k for k in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---" + "|:-:" * len(columns) + "|",
        "| *size (px)* | " + " | ".join([" / ".join(map(str, sizes))] * len(columns)) + " |",
    ]
    best = {
        (s, k): max(round(v, digits) for (m, ss, kk), v in value.items() if ss == s and kk == k and is_finite(v))
        for s in sizes
        for k in columns
        if any(ss == s and kk == k and is_finite(v) for (_, ss, kk), v in value.items())
    }
    for m in models:
        entries = []
        for k in columns:
            parts = []
            for s in sizes:
                v = value.get((m, s, k))
                text = fmt(v, digits)
                parts.append(f"**{text}**" if is_finite(v) and round(v, digits) == best.get((s, k)) else text)
            entries.append(" / ".join(parts) if any(p != MISSING for p in parts) else "")
        lines.append(f"| {model_label(m)} | " + " | ".join(entries) + " |")
    return "\n".join(lines)
