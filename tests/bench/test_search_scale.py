"""The search-at-scale bench, scaled down (20k vectors): every index type measured against exact Flat."""

from cbmir.bench.search_scale import database_and_queries, markdown_table, run_bench, targets


def test_clustered_data_are_not_noise():
    db, q = database_and_queries(2000, 100, 64, n_clusters=20, latent_dim=8, seed=0)
    assert db.shape == (2000, 64) and q.shape == (100, 64) and db.dtype == q.dtype == "float32"
    top = __import__("numpy").linalg.svd(db - db.mean(0), compute_uv=False) ** 2
    assert top[:8].sum() / top.sum() > 0.9  # most variance in the 8-d latent space


def test_bench_scaled_down():
    settings = (
        ("Flat", ("",)),
        ("IVF64,Flat", ("nprobe=4", "nprobe=64")),
        ("HNSW16", ("efSearch=64",)),
        ("IVF64,PQ16", ("nprobe=8",)),
    )
    result = run_bench(20_000, 64, 200, 10, settings=settings, train_size=5_000, n_clusters=50)
    rows = {(r.index, r.params): r for r in result.rows}
    assert rows[("Flat", "")].recall == 1.0 and rows[("Flat", "")].speedup_vs_flat == 1.0
    assert rows[("IVF64,Flat", "nprobe=64")].recall == 1.0  # every list probed: exact
    assert rows[("IVF64,Flat", "nprobe=4")].recall < rows[("IVF64,Flat", "nprobe=64")].recall
    assert rows[("HNSW16", "efSearch=64")].recall > 0.9
    pq = rows[("IVF64,PQ16", "nprobe=8")]
    assert pq.memory_ratio_vs_flat > 8 and 0.1 < pq.recall < 1.0  # 16 code bytes + 8 id bytes vs 256
    assert targets(result, recall=0.0, speedup=0.0, memory=8.0)["small"]["index"] == "IVF64,PQ16"
    assert "| IVF64,PQ16 | nprobe=8 |" in markdown_table(result)
