"""protocol.exclude_same_group: a query's own group (patient) never among its neighbours, k kept."""

import numpy as np
import pytest

from cbmir.errors import DataError
from cbmir.search.exact import drop_same_group, search, search_excluding_group


def test_drop_same_group_keeps_rank_order_and_marks_short_rows():
    d = np.array([[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]], dtype=np.float32)
    i = np.array([[3, 0, 2, 1], [0, 1, 2, 3]])
    db_groups = np.array(["p", "q", "p", "r"])
    kept_d, kept_i, short = drop_same_group(d, i, db_groups, np.array(["p", "q"]), 2)
    assert kept_i.tolist() == [[3, 1], [0, 2]] and kept_d[0].tolist() == pytest.approx([0.1, 0.4])
    assert short.tolist() == [False, False]
    _, kept_i, short = drop_same_group(d, i, db_groups, np.array(["p", "q"]), 3)
    assert short.tolist() == [True, False] and kept_i[0].tolist() == [3, 1, -1]


def test_search_excluding_group_equals_a_brute_force_filter():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(200, 8)).astype(np.float32)
    groups = np.array([f"p{i // 10}" for i in range(200)], dtype=object)  # 10 images per patient
    q_idx = rng.choice(200, 30, replace=False)
    queries = db[q_idx] + rng.normal(0, 0.01, (30, 8)).astype(np.float32)  # near-duplicates of own-patient images
    d, i = search_excluding_group(db, queries, 5, "l2", groups, groups[q_idx], backend="torch")
    _, full = search(db, queries, 200, "l2", backend="torch")
    for row, q in enumerate(q_idx):
        expected = [j for j in full[row] if groups[j] != groups[q]][:5]
        assert i[row].tolist() == expected
    assert all(groups[j] != groups[q] for row, q in enumerate(q_idx) for j in i[row])
    _, plain = search(db, queries, 5, "l2", backend="torch")
    assert any(groups[j] == groups[q] for row, q in enumerate(q_idx) for j in plain[row])  # which it did find


def test_too_few_database_items_outside_the_group_is_a_clear_error():
    db = np.zeros((6, 2), np.float32)
    groups = np.array(["p"] * 4 + ["q"] * 2)
    with pytest.raises(DataError, match="fewer than k=3"):
        search_excluding_group(db, db[:1], 3, "l2", groups, np.array(["p"]), backend="torch")
