"""FAISS search equals the torch oracle; metric semantics; argument checks."""

import numpy as np
import pytest

from cbmir.search.exact import l2_normalize, search, search_faiss, search_torch


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 32)).astype(np.float32), rng.normal(size=(40, 32)).astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_faiss_equals_torch(vectors, metric):
    db, q = vectors
    d_f, i_f = search_faiss(db, q, 7, metric)
    d_t, i_t = search_torch(db, q, 7, metric)
    np.testing.assert_array_equal(i_f, i_t)
    np.testing.assert_allclose(d_f, d_t, rtol=1e-4, atol=1e-4)
    assert i_f.dtype == np.int64 and d_f.dtype == np.float32 and i_f.shape == (40, 7)


def test_l2_is_squared_euclidean_and_sorted(vectors):
    db, q = vectors
    d, i = search(db, q, 5, "l2")
    brute = ((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(i, np.argsort(brute, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(d, np.take_along_axis(brute, i, 1), rtol=1e-4)
    assert np.all(np.diff(d, axis=1) >= 0)


def test_cosine_ignores_scale_l2_does_not():
    db = np.array([[1.0, 0.0], [10.0, 1.0]], dtype=np.float32)
    q = np.array([[1.0, 0.1]], dtype=np.float32)
    _, i_cos = search(db, q, 1, "cosine")
    _, i_l2 = search(db, q, 1, "l2")
    assert i_cos[0, 0] == 1 and i_l2[0, 0] == 0
    d, _ = search(db, q, 2, "cosine")
    np.testing.assert_allclose(d[0], (l2_normalize(q) @ l2_normalize(db).T)[0][[1, 0]], rtol=1e-6)


def test_torch_backend_selectable(vectors):
    db, q = vectors
    np.testing.assert_array_equal(search(db, q, 3, backend="torch")[1], search(db, q, 3, backend="faiss")[1])


@pytest.mark.parametrize("k", [0, 301])
def test_k_out_of_range(vectors, k):
    with pytest.raises(ValueError, match="k="):
        search(*vectors, k)


def test_bad_metric_and_shapes(vectors):
    db, q = vectors
    with pytest.raises(ValueError, match="metric"):
        search(db, q, 3, "manhattan")
    with pytest.raises(ValueError, match="equal width"):
        search(db, q[:, :5], 3)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_ties_broken_by_database_index_in_both_backends(metric):
    """Duplicated database vectors: equal scores, so the lower index comes first, identically in FAISS and torch."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(50, 16)).astype(np.float32)
    # every vector five times, shuffled so duplicates sit at scattered indices
    db = np.concatenate([base] * 5)[rng.permutation(250)]
    q = np.concatenate([base[:10], rng.normal(size=(10, 16)).astype(np.float32)])
    d_f, i_f = search_faiss(db, q, 7, metric)
    d_t, i_t = search_torch(db, q, 7, metric)
    np.testing.assert_array_equal(i_f, i_t)
    np.testing.assert_array_equal(d_f, d_t)
    brute = ((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1)
    if metric == "cosine":
        brute = -(l2_normalize(q.astype(np.float64)) @ l2_normalize(db.astype(np.float64)).T)
    expected = np.lexsort((np.broadcast_to(np.arange(250), brute.shape), brute), axis=-1)[:, :7]
    np.testing.assert_array_equal(i_f, expected)
    for row in i_f:  # within each group of five copies the indices ascend
        groups = {}
        for j in row:
            groups.setdefault(db[j].tobytes(), []).append(j)
        assert all(g == sorted(g) for g in groups.values())


def test_tie_group_wider_than_the_candidate_window():
    """40 copies of the nearest vector and k=30: the window widens until the whole tie is seen."""
    db = np.zeros((100, 4), dtype=np.float32)
    db[:, 0] = np.arange(100) % 3  # values 0, 1, 2 repeated: ~33 exact copies of each
    q = np.array([[1.0, 0, 0, 0]], dtype=np.float32)
    for backend in (search_faiss, search_torch):
        d, i = backend(db, q, 30, "l2")
        np.testing.assert_array_equal(i[0], np.arange(1, 100, 3)[:30])
        assert np.all(d == 0)
