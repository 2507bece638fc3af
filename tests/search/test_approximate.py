"""Approximate indexes and compression: recall against exact search, separate result folders, paper refusing them,
GPU placement decided on a fake device list."""

import json

import numpy as np
import pytest

from cbmir.bench.search_scale import database_and_queries
from cbmir.cell.run import run_cell
from cbmir.errors import ConfigError
from cbmir.layout import cell_dir, protocol_id, search_id
from cbmir.search.approximate import (
    SearchSpec,
    build_search_index,
    fp16_storage,
    recall_at_k,
    search_index,
    search_spec,
)
from cbmir.search.exact import search
from cbmir.search.placement import plan_placement


@pytest.fixture(scope="module")
def clustered():
    """3000 embedding-like vectors (clusters on an 8-d latent, in 32 dims) and 200 queries."""
    return database_and_queries(3000, 200, 32, n_clusters=30, latent_dim=8, noise=0.05, seed=0)


def recall_of(spec: SearchSpec, db: np.ndarray, q: np.ndarray, metric: str = "l2", k: int = 10):
    built = build_search_index(db, metric, spec)
    _, found = search_index(built, q, k, metric)
    _, truth = search(db, q, k, metric)
    return recall_at_k(found, truth), built


@pytest.mark.parametrize(
    "spec, low, high",
    [
        (SearchSpec(index="IVF32,Flat", nprobe=32), 1.0, 1.0),  # every list probed: exact
        (SearchSpec(index="IVF32,Flat", nprobe=2), 0.5, 0.999),
        (SearchSpec(index="HNSW16", efSearch=64), 0.9, 1.0),
        (SearchSpec(index="IVF32,PQ8", nprobe=32), 0.2, 0.95),
        (SearchSpec(index="SQ8"), 0.85, 1.0),
        (SearchSpec(index="OPQ8,IVF32,PQ8", nprobe=8, train_size=1000), 0.2, 0.95),
        (SearchSpec(dtype="float16"), 0.99, 1.0),
        (SearchSpec(pca=8), 0.6, 1.0),  # the data lie near an 8-d subspace
    ],
    ids=lambda v: getattr(v, "index", None) and f"{v.index}-{v.parameters or v.dtype}-{v.pca}",
)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_every_index_type_against_exact(clustered, spec, low, high, metric):
    db, q = clustered
    recall, built = recall_of(spec, db, q, metric)
    assert low <= recall <= high, (spec, recall)
    assert built.placement == "cpu"  # no GPU here


def test_compression_memory(clustered):
    db, q = clustered
    _, flat = recall_of(SearchSpec(index="Flat", pca=None, dtype="float16"), db, q)
    _, pq = recall_of(SearchSpec(index="IVF32,PQ8", nprobe=4), db, q)
    _, pca = recall_of(SearchSpec(pca=8), db, q)
    raw = db.nbytes
    assert 0.45 * raw < flat.memory_bytes < 0.55 * raw  # fp16: half
    assert pq.memory_bytes < raw / 4  # 8 bytes of code + 8 of id per vector, vs 128
    assert pca.memory_bytes < raw / 3  # 8 of 32 dims, plus the PCA matrix
    assert flat.factory == "SQfp16" and pca.factory == "PCA8,Flat"


def test_fp16_and_pca_round_trip(clustered):
    """fp16 storage returns the neighbours of the fp16-rounded vectors; PCA keeps the neighbours of a low-rank set."""
    db, q = clustered
    rounded = db.astype(np.float16).astype(np.float32)
    built = build_search_index(db, "l2", SearchSpec(dtype="float16"))
    d, found = search_index(built, q, 5, "l2")
    d_ref, i_ref = search(rounded, q, 5, "l2")
    np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-3)
    assert (found == i_ref).mean() > 0.99
    low_rank = db - db.mean(0)
    u, s, vt = np.linalg.svd(low_rank, full_matrices=False)
    exact_rank8 = (u[:, :8] * s[:8]) @ vt[:8] + db.mean(0)
    recall, _ = recall_of(SearchSpec(pca=8), exact_rank8.astype(np.float32), q)
    assert recall > 0.99


def test_fp16_refused_for_encoded_vectors():
    assert fp16_storage("IVF64,Flat") == "IVF64,SQfp16" and fp16_storage("HNSW32") == "HNSW32,SQfp16"
    with pytest.raises(ConfigError, match="encodes them already"):
        fp16_storage("IVF64,PQ8")


def test_search_ids_keep_results_apart(compose, data_dir, tmp_path):
    from tests.helpers.config import base_overrides

    base = base_overrides(data_dir, tmp_path / "out")
    ids = {
        protocol_id(compose(base + ["protocol=standard", *extra]))
        for extra in (
            [],
            ["search.index='IVF4096,PQ64'"],
            ["search.index='IVF4096,PQ64'", "search.nprobe=16"],
            ["search.index=HNSW32", "search.efSearch=64"],
            ["search.pca=128"],
            ["store.dtype=float16"],
            ["search.index='IVF4096,PQ64'", "search.train_size=5000"],
        )
    }
    assert ids == {
        "standard",
        "standard+ivf4096-pq64",
        "standard+ivf4096-pq64-nprobe16",
        "standard+hnsw32-ef64",
        "standard+flat-pca128",
        "standard+flat-fp16",
        "standard+ivf4096-pq64-trainsize5000",
    }
    assert search_id({"protocol": {"name": "paper", "metric": "l2"}}) is None  # results without a search node


@pytest.mark.parametrize("extra", [["search.index=HNSW32"], ["search.pca=64"], ["store.dtype=float16"]])
def test_paper_protocol_refuses_approximate_search(cell_cfg, extra):
    with pytest.raises(ConfigError, match="protocol=paper searches exactly"):
        search_spec(cell_cfg(*extra))
    with pytest.raises(ConfigError, match="protocol=paper"):
        run_cell(cell_cfg(*extra))


def test_bad_search_settings(cell_cfg):
    with pytest.raises(ConfigError, match="store.dtype"):
        search_spec(cell_cfg("protocol=standard", "store.dtype=int8"))
    with pytest.raises(ConfigError, match="search.pca"):
        search_spec(cell_cfg("protocol=standard", "search.pca=0"))
    with pytest.raises(ConfigError, match="FAISS cannot build"):
        build_search_index(np.zeros((10, 8), np.float32), "l2", SearchSpec(index="Nonsense7"))
    with pytest.raises(ConfigError, match="training vectors"):
        build_search_index(np.random.rand(50, 8).astype(np.float32), "l2", SearchSpec(index="IVF64,Flat"))


def test_approximate_cell_reports_recall_and_writes_its_own_folder(cell_cfg):
    exact_cfg = cell_cfg("protocol=standard", "dataset=bloodmnist")
    approx_cfg = cell_cfg("protocol=standard", "dataset=bloodmnist", "search.index='IVF2,Flat'", "search.nprobe=1")
    exact, approx = run_cell(exact_cfg), run_cell(approx_cfg)
    assert cell_dir(exact_cfg).parent.parent.parent.name == "standard"
    assert cell_dir(approx_cfg).parent.parent.parent.name == "standard+ivf2-flat-nprobe1"
    assert "approximate" not in exact and approx["cached"] == {"database": True, "query": True}
    report = json.loads((cell_dir(approx_cfg) / "result.json").read_text())["approximate"]
    assert report["index"] == "IVF2,Flat" and report["sample"] == 12 and report["placement"] == "cpu"
    neighbors = np.load(cell_dir(approx_cfg) / "neighbors.npy")
    truth = np.load(cell_dir(exact_cfg) / "neighbors.npy")
    assert report["recall@5"] == pytest.approx(recall_at_k(neighbors, truth))
    at_r = {"MAP@R", "R-precision", "MAP@R_macro", "R-precision_macro"}  # exact embeddings, whatever the index
    assert set(report["metric_delta"]) == set(exact["metrics"]) - at_r
    assert report["metric_delta"] == pytest.approx(
        {name: approx["metrics"][name] - exact["metrics"][name] for name in report["metric_delta"]}
    )
    assert all(approx["metrics"][name] == exact["metrics"][name] for name in at_r & set(exact["metrics"]))


GB = 10**9


@pytest.mark.parametrize(
    "size, free, shard, kind, devices",
    [
        (5 * GB, [], True, "cpu", ()),
        (5 * GB, [80 * GB], True, "gpu", (0,)),
        (90 * GB, [80 * GB], True, "cpu", ()),
        (90 * GB, [80 * GB] * 4, True, "sharded", (0, 1, 2, 3)),
        (5 * GB, [80 * GB] * 2, True, "sharded", (0, 1)),
        (5 * GB, [80 * GB] * 2, False, "replicated", (0, 1)),
        (90 * GB, [80 * GB] * 2, False, "sharded", (0, 1)),  # one copy does not fit: shards
        (60 * GB, [80 * GB, 20 * GB], False, "cpu", ()),  # the smallest GPU bounds each shard
        (400 * GB, [80 * GB] * 4, True, "cpu", ()),
    ],
)
def test_placement_on_fake_devices(size, free, shard, kind, devices):
    plan = plan_placement(size, free, shard=shard, memory_fraction=0.8)
    assert (plan.kind, plan.devices) == (kind, devices), plan.reason
