"""One cell in-process: the result contract, skipping, caching, protocols, validation and crash safety."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cbmir import data
from cbmir.cell import evaluate
from cbmir.cell import run as cell
from cbmir.cell.run import run_cell
from cbmir.errors import ConfigError, InvalidCellError
from cbmir.layout import cell_dir
from cbmir.metrics.retrieval import retrieval_metrics
from cbmir.search.exact import search_torch
from tests.helpers.config import base_overrides

CONTRACT_KEYS = {
    "protocol",
    "dataset",
    "size",
    "model",
    "k",
    "metric",
    "n_queries",
    "n_database",
    "embedding_dim",
    "metrics",
    "embeddings",
    "seconds",
    "cbmir_version",
    "created",
}


def test_result_contract(cell_cfg, data_dir):
    cfg = cell_cfg("dataset=bloodmnist")
    result = run_cell(cfg)
    out = cell_dir(cfg)
    assert out == Path(cfg.paths.output_dir) / "results" / "paper" / "bloodmnist" / "28" / "tiny_resnet"
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert CONTRACT_KEYS <= set(on_disk)
    assert (on_disk["protocol"], on_disk["dataset"], on_disk["size"], on_disk["model"]) == (
        "paper",
        "bloodmnist",
        28,
        "tiny_resnet",
    )
    assert on_disk["metric"] == "l2" and on_disk["k"] == 5
    assert (on_disk["n_database"], on_disk["n_queries"], on_disk["embedding_dim"]) == (24, 12, 96)
    assert set(on_disk["metrics"]) == {"mAP@5", "mMV@5", "ACC@1", "ACC@3", "ACC@5"}
    assert set(on_disk["seconds"]) >= {"extraction", "search"}

    db = np.load(on_disk["embeddings"]["database"])
    q = np.load(on_disk["embeddings"]["query"])
    assert db.dtype == np.float32 and db.shape == (24, 96) and q.shape == (12, 96)
    neighbors, distances = np.load(out / "neighbors.npy"), np.load(out / "distances.npy")
    assert neighbors.dtype == np.int64 and neighbors.shape == (12, 5)
    assert distances.dtype == np.float32 and distances.shape == (12, 5)
    d_ref, i_ref = search_torch(db, q, 5, "l2")
    np.testing.assert_array_equal(neighbors, i_ref)
    np.testing.assert_allclose(distances, d_ref, rtol=1e-4, atol=1e-3)

    labels = data.open_split(cfg.dataset, 28, data_dir, "test").labels
    db_labels = data.open_split(cfg.dataset, 28, data_dir, "train").labels
    assert on_disk["metrics"] == pytest.approx(retrieval_metrics(labels, db_labels, neighbors, k=5))
    # the fixture has class structure, so even random weights retrieve better than chance (25 %)
    assert on_disk["metrics"]["ACC@1"] > 50
    assert (out / "logs" / "metrics.csv").exists()  # CSV logger
    import matplotlib.image

    picture = matplotlib.image.imread(out / "gallery.png")
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 300


def test_finished_cell_is_skipped_unless_overwrite(cell_cfg, monkeypatch):
    cfg = cell_cfg()
    first = run_cell(cfg)
    monkeypatch.setattr(cell, "open_splits", lambda *a, **k: pytest.fail("a finished cell must not load data"))
    assert run_cell(cfg)["created"] == first["created"]
    monkeypatch.undo()
    again = run_cell(cell_cfg("overwrite=true"))
    assert again["cached"] == {"database": True, "query": True}


def test_cache_reused_across_metrics_and_keyed_by_content(cell_cfg, caplog):
    caplog.set_level(logging.INFO, logger="cbmir")
    first = run_cell(cell_cfg())
    assert first["cached"] == {"database": False, "query": False}
    cosine = run_cell(cell_cfg("protocol.metric=cosine"))
    assert cosine["protocol"] == "paper+cosine" and cosine["metric"] == "cosine"
    assert cosine["cached"] == {"database": True, "query": True}
    assert cosine["embeddings"] == first["embeddings"]
    assert "tiny_resnet: query embeddings from cache" in caplog.text
    other_seed = run_cell(cell_cfg("seed=1", "protocol=standard"))  # random weights: the seed is part of the key
    assert other_seed["cached"] == {"database": False, "query": False}
    assert other_seed["embeddings"] != first["embeddings"]
    no_cache = run_cell(cell_cfg("use_cache=false", "overwrite=true"))
    assert no_cache["cached"] == {"database": False, "query": False}
    np.testing.assert_array_equal(np.load(no_cache["embeddings"]["query"]), np.load(first["embeddings"]["query"]))


def test_standard_protocol_adds_textbook_metrics(cell_cfg):
    result = run_cell(cell_cfg("protocol=standard", "dataset=bloodmnist"))
    assert result["protocol"] == "standard" and result["metric"] == "cosine"
    assert {"AP@5_textbook", "P@5", "R@5"} <= set(result["metrics"])


def test_multilabel_chestmnist_cell(cell_cfg):
    result = run_cell(cell_cfg("dataset=chestmnist"))
    assert result["n_database"] == 24 and 0 <= result["metrics"]["mAP@5"] <= 100


def test_sizes_and_k_validated_before_any_work(cell_cfg, monkeypatch):
    monkeypatch.setattr(data.medmnist, "_download", lambda *a, **k: pytest.fail("must not download"))
    monkeypatch.setattr("cbmir.models.build_backbone", lambda *a, **k: pytest.fail("must not build"))
    with pytest.raises(InvalidCellError, match=r"sizes \[28, 64, 128, 224\]"):
        run_cell(cell_cfg("size=32"))
    with pytest.raises(ConfigError, match="k=547"):  # BreastMNIST's database has 546 images
        run_cell(cell_cfg("k=547"))
    with pytest.raises(ConfigError, match="k=0"):
        run_cell(cell_cfg("k=0"))
    with pytest.raises(ConfigError, match="protocol.metric"):
        run_cell(cell_cfg("protocol.metric=manhattan"))
    with pytest.raises(ConfigError, match="model.weights"):
        run_cell(cell_cfg("model.weights=/nonexistent/file.pth"))
    with pytest.raises(ConfigError, match="batch_size"):
        run_cell(cell_cfg("batch_size=0"))


def test_k_larger_than_a_local_database(cell_cfg):
    with pytest.raises(ConfigError, match="k=30"):
        run_cell(cell_cfg("k=30"))  # valid for the real BreastMNIST, not for the 24-image fixture


def test_crash_leaves_no_finished_looking_result(cell_cfg, monkeypatch):
    cfg = cell_cfg()

    def broken(*args, **kwargs):
        raise RuntimeError("search died")

    monkeypatch.setattr(evaluate, "search", broken)
    with pytest.raises(RuntimeError, match="search died"):
        run_cell(cfg)
    assert not (cell_dir(cfg) / "result.json").exists()
    monkeypatch.undo()
    result = run_cell(cfg)  # resumes: the embeddings it had finished are reused
    assert result["cached"] == {"database": True, "query": True}


def test_wandb_offline_run_per_cell(cell_cfg, tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logged: list[dict] = []
    original = WandbLogger.log_metrics
    monkeypatch.setattr(
        WandbLogger,
        "log_metrics",
        lambda self, metrics, step=None: (logged.append(dict(metrics)), original(self, metrics, step)),
    )
    result = run_cell(cell_cfg("logger=default"))
    assert wandb.run is None  # finished after the cell
    runs = list((Path(result["config"]["paths"]["output_dir"]) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # the run gets every headline with its interval (its summary: the last value of each key)
    (values,) = [m for m in logged if "mAP@5" in m]
    for metric, bounds in result["intervals"].items():
        assert values[metric] == pytest.approx(result["metrics"][metric])
        assert (values[f"{metric}_ci_low"], values[f"{metric}_ci_high"]) == pytest.approx(
            (bounds["low"], bounds["high"])
        )


@pytest.mark.parametrize(
    "options,folder,dim",
    [
        ((), "adrenalmnist3d", 32 * 96),
        (("dataset.aggregate=mean",), "adrenalmnist3d+mean", 96),
        (("dataset.planes=tri", "dataset.aggregate=max"), "adrenalmnist3d+tri-max", 96),
    ],
)
def test_3d_cells(cell_cfg, options, folder, dim):
    cfg = cell_cfg("dataset=adrenalmnist3d", "batch_size=4", *options)
    result = run_cell(cfg)
    assert cell_dir(cfg).parts[-3] == folder and result["dataset"] == folder
    # size 28 runs at 32³ as in the study: concat is 32 slices × d
    assert result["embedding_dim"] == dim and result["volume"]["side"] == 32
    assert np.load(result["embeddings"]["database"]).shape == (12, dim)
    assert (cell_dir(cfg) / "gallery.png").stat().st_size > 1000  # middle slices


def test_3d_size_128_is_invalid(cell_cfg):
    with pytest.raises(InvalidCellError, match=r"adrenalmnist3d has sizes \[28, 64\]"):
        run_cell(cell_cfg("dataset=adrenalmnist3d", "size=128"))


def test_bf16_autocast_agrees_with_fp32(cell_cfg):
    from cbmir.search.exact import l2_normalize

    fp32 = run_cell(cell_cfg("dataset=bloodmnist", "precision=32-true"))
    bf16 = run_cell(cell_cfg("dataset=bloodmnist", "precision=bf16-mixed", "protocol.metric=cosine"))
    assert fp32["precision"] == "32-true" and bf16["precision"] == "bf16-mixed"
    assert bf16["embeddings"] != fp32["embeddings"]  # precision is part of the cache key
    for role in ("database", "query"):
        a, b = (l2_normalize(np.load(r["embeddings"][role])) for r in (fp32, bf16))
        assert (a * b).sum(1).min() >= 0.999


def test_precision_auto_is_fp32_on_cpu(cell_cfg):
    from cbmir.cell.run import resolve_precision
    from cbmir.cell.spec import build_spec

    for overrides, expected in (((), "32-true"), (("trainer=gpu",), "bf16-mixed")):
        spec = build_spec(cell_cfg(*overrides))
        assert resolve_precision(spec.precision, spec.trainer) == expected


def test_worker_processes_give_the_same_embeddings(cell_cfg):
    inline = run_cell(cell_cfg("dataset=bloodmnist"))
    workers = run_cell(cell_cfg("dataset=bloodmnist", "num_workers=2", "protocol.metric=cosine", "use_cache=false"))
    for role in ("database", "query"):
        np.testing.assert_array_equal(np.load(inline["embeddings"][role]), np.load(workers["embeddings"][role]))


def test_generic_entries_are_named_by_their_arch(compose, data_dir, tmp_path):
    from cbmir.layout import model_id

    base = [o for o in base_overrides(data_dir, tmp_path) if not o.startswith("model.")] + ["model.pretrained=false"]
    cfg = compose(base + ["model=timm", "model.arch=test_resnet.r160_in1k"])
    assert model_id(cfg) == "timm-test_resnet.r160_in1k"
    assert cell_dir(cfg).name == "timm-test_resnet.r160_in1k"
    assert model_id(compose(base + ["model=timm", "model.arch=hf-hub:org/some model"])) == "timm-org_some_model"
    assert model_id(compose(base + ["model=open_clip", "model.arch=ViT-B-16", "model.tag=laion2b_s34b_b88k"])) == (
        "open_clip-ViT-B-16-laion2b_s34b_b88k"
    )
    assert model_id(compose(base + ["model=timm", "model.arch=x", "model.name=mine"])) == "mine"
    result = run_cell(cfg)
    assert result["model"] == "timm-test_resnet.r160_in1k" and result["embedding_dim"] == 96
