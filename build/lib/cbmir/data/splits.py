"""Patient-aware splits: every group (patient, study) entirely in the database or entirely among the queries.

:func:`assign_splits` is a seeded, greedy stratified group split, the single-fold case of
scikit-learn's ``StratifiedGroupKFold``, with an exact query fraction instead of ``1 / n_folds``:
groups are visited largest first (ties in seeded random order), and a group goes to the
queries when that brings every class's query share closer to ``fraction``, and never when it
would leave one of its classes without a database item. Assignments made before are kept
for the groups that still exist, so adding files never moves a patient across the split.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cbmir.data.entries import Entry
from cbmir.safety.files import atomic_write_text

DATABASE, QUERIES = "train", "test"


def assign_splits(
    labels: Sequence[Sequence[str]],
    groups: Sequence[str],
    fraction: float,
    seed: int = 0,
    previous: dict[str, str] | None = None,
) -> list[str]:
    """``"train"`` (database) or ``"test"`` (queries) per item; all items of a group share one."""
    if not 0 < fraction < 1:
        raise ValueError(f"the query fraction must lie strictly between 0 and 1, got {fraction}")
    classes = sorted({c for item in labels for c in item})
    column = {c: i for i, c in enumerate(classes)}
    names = list(dict.fromkeys(groups))
    row = {g: i for i, g in enumerate(names)}
    counts = np.zeros((len(names), len(classes)), dtype=np.int64)
    sizes = np.zeros(len(names), dtype=np.int64)
    for item, g in zip(labels, groups):
        sizes[row[g]] += 1
        for c in item:
            counts[row[g], column[c]] += 1
    totals = counts.sum(0)
    target = fraction * totals
    weight = 1.0 / np.maximum(totals, 1)
    in_queries = np.zeros(len(classes), dtype=np.int64)
    side: dict[str, str] = {}
    for g, where in (previous or {}).items():
        if g in row and where in (DATABASE, QUERIES):
            side[g] = where
            if where == QUERIES:
                in_queries += counts[row[g]]
    rng = np.random.default_rng(seed)
    todo = [i for i in rng.permutation(len(names)) if names[i] not in side]
    todo.sort(key=lambda i: -sizes[i])  # stable: equal sizes keep the seeded order
    for i in todo:
        c = counts[i]
        database_left = totals - in_queries - c
        if np.any((database_left < 1) & (c > 0)):
            side[names[i]] = DATABASE
            continue
        before = np.sum(((in_queries - target) * weight) ** 2)
        after = np.sum(((in_queries + c - target) * weight) ** 2)
        if after < before:
            side[names[i]] = QUERIES
            in_queries += c
        else:
            side[names[i]] = DATABASE
    return [side[g] for g in groups]


def read_assignment(path: Path) -> dict[str, str]:
    """A saved split: ``group -> train | test`` (empty when there is none yet)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {r["group"]: r["split"] for r in csv.DictReader(fh)}


def write_assignment(path: Path, assignment: dict[str, str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "split"])
    writer.writerows(sorted(assignment.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())


def labels_missing_from_database(entries: Sequence[Entry]) -> dict[str, str]:
    """Query (and val) items with a label that no database item has: they could never be answered."""
    known = {c for e in entries if e.split == DATABASE for c in e.labels}
    bad = {}
    for e in entries:
        absent = [c for c in e.labels if c not in known]
        if e.split != DATABASE and absent:
            bad[e.source] = f"label(s) {absent} have no image in the database (train) split"
    return bad


def groups_on_both_sides(entries: Sequence[Entry]) -> list[str]:
    """Groups with items in the database and among the queries (possible only when splits are given)."""
    sides: dict[str, set[str]] = {}
    for e in entries:
        if e.group:
            sides.setdefault(e.group, set()).add(e.split or "")
    return sorted(g for g, s in sides.items() if {DATABASE, QUERIES} <= s)
