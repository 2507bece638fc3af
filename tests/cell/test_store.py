"""The prediction writer's shard merge and the content-keyed cache paths."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cbmir.cell.store import EmbeddingWriter, cache_key, cache_path


def write_shard(writer: EmbeddingWriter, rank: int, index: np.ndarray, emb: np.ndarray, i: int = 0):
    emb_path, idx_path = writer._shard(i, rank)
    emb_path.parent.mkdir(parents=True, exist_ok=True)
    emb.astype(np.float32).tofile(emb_path)
    index.astype(np.int64).tofile(idx_path)


def test_merge_of_interleaved_ranks_equals_dataset_order(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.normal(size=(11, 4)).astype(np.float32)
    target = tmp_path / "emb.npy"
    writer = EmbeddingWriter([target], [11], dim=4)
    # DDP without padding: rank r gets r, r+2, r+4, ... (uneven shard sizes are fine)
    for rank in (0, 1):
        idx = np.arange(rank, 11, 2)
        write_shard(writer, rank, idx[::-1], full[idx[::-1]])
    writer.merge(0, world_size=2)
    np.testing.assert_array_equal(np.load(target), full)
    assert not target.with_suffix(".shards").exists()


@pytest.mark.parametrize(
    "ranks,problem",
    [((np.array([0, 1, 2]), np.array([2, 3])), "more than once"), ((np.array([0, 1]), np.array([3])), "missing")],
)
def test_merge_asserts_each_index_exactly_once(tmp_path, ranks, problem):
    target = tmp_path / "emb.npy"
    writer = EmbeddingWriter([target], [4], dim=2)
    for rank, idx in enumerate(ranks):
        write_shard(writer, rank, idx, np.zeros((len(idx), 2)))
    with pytest.raises(RuntimeError, match=problem):
        writer.merge(0, world_size=2)
    assert not target.exists()  # nothing that looks finished


def test_batches_stream_to_disk(tmp_path):
    class _Trainer:
        global_rank = 0

    writer = EmbeddingWriter([tmp_path / "a.npy", tmp_path / "b.npy"], [3, 2], dim=2)
    writer.on_predict_start(_Trainer(), None)
    writer.write_on_batch_end(
        None, None, {"index": torch.tensor([2, 0]), "embedding": torch.ones(2, 2)}, None, None, 0, 0
    )
    writer.write_on_batch_end(
        None, None, {"index": torch.tensor([1]), "embedding": torch.zeros(1, 2)}, None, None, 1, 0
    )
    writer.write_on_batch_end(
        None, None, {"index": torch.tensor([1, 0]), "embedding": 2 * torch.ones(2, 2)}, None, None, 0, 1
    )
    for emb, idx in writer._files.values():
        emb.close(), idx.close()
    writer.merge(0, 1)
    writer.merge(1, 1)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), [[1, 1], [0, 0], [1, 1]])
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), [[2, 2], [2, 2]])
    with pytest.raises(RuntimeError, match="width"):
        writer._files = {0: (open(tmp_path / "x", "wb"), open(tmp_path / "y", "wb"))}
        writer.write_on_batch_end(
            None, None, {"index": torch.tensor([0]), "embedding": torch.ones(1, 5)}, None, None, 0, 0
        )


def test_cache_key_changes_with_every_field():
    base = {"model": "m", "backbone": {"weights": "a"}, "dataset": "d", "size": 28, "split": "train"}
    keys = {cache_key(base)}
    for field, value in [("backbone", {"weights": "b"}), ("size", 64), ("split", "test"), ("dataset", "e")]:
        keys.add(cache_key({**base, field: value}))
    assert len(keys) == 5
    assert cache_key(dict(reversed(list(base.items())))) == cache_key(base)  # order-free
    path = cache_path(Path("/c"), base)
    assert path.parent == Path("/c/embeddings/m") and path.name.startswith("d_28_train_")
