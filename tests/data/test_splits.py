"""Patient-aware splits: no group on both sides, stratified, seeded, kept when files are added."""

import numpy as np

from cbmir.data.entries import Entry
from cbmir.data.splits import assign_splits, groups_on_both_sides, labels_missing_from_database


def _items(n_groups=60, seed=0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(n_groups):
        c = ("a", "b", "c")[g % 3]
        for _ in range(int(rng.integers(1, 6))):
            labels.append((c,))
            groups.append(f"patient{g}")
    return labels, groups


def test_no_group_on_both_sides_and_the_fraction_is_met_per_class():
    labels, groups = _items()
    sides = assign_splits(labels, groups, 0.2, seed=0)
    by_group = {}
    for g, s in zip(groups, sides):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    for c in "abc":
        members = [s for lab, s in zip(labels, sides) if lab == (c,)]
        share = members.count("test") / len(members)
        assert 0.1 <= share <= 0.3, (c, share)


def test_seeded_and_kept_when_files_are_added():
    labels, groups = _items()
    first = assign_splits(labels, groups, 0.25, seed=3)
    assert first == assign_splits(labels, groups, 0.25, seed=3)
    assert first != assign_splits(labels, groups, 0.25, seed=4)
    previous = dict(zip(groups, first))
    more_labels, more_groups = labels + [("a",), ("b",)] * 5, groups + [f"new{i}" for i in range(10)]
    again = assign_splits(more_labels, more_groups, 0.25, seed=3, previous=previous)
    assert again[: len(first)] == first


def test_a_class_of_one_group_stays_in_the_database():
    sides = assign_splits([("a",)] * 10 + [("rare",)] * 3, [f"g{i}" for i in range(10)] + ["r"] * 3, 0.5)
    assert sides[-3:] == ["train"] * 3


def test_multilabel_items_are_stratified_by_each_label():
    labels = [("x", "y") if i % 2 else ("x",) for i in range(40)]
    sides = assign_splits(labels, [str(i // 2) for i in range(40)], 0.3)
    assert 0.2 <= sides.count("test") / 40 <= 0.4


def test_labels_missing_from_the_database_and_shared_groups():
    entries = [
        Entry(None, "a.png", ("cat",), "train", "p1"),
        Entry(None, "b.png", ("cat",), "test", "p1"),
        Entry(None, "c.png", ("eel",), "test", "p2"),
    ]
    assert set(labels_missing_from_database(entries)) == {"c.png"}
    assert groups_on_both_sides(entries) == ["p1"]
