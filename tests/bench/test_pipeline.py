"""The extraction comparison: cbmir's data path never builds PIL images, preprocessing runs on the module's
device, and the pipeline, model-only and conventional paths embed the same images alike."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from cbmir.bench.common import Env, build, synthetic_split
from cbmir.bench.pipeline import bench_setting, conventional_run, conventional_transform, pipeline_run
from cbmir.bench.profiles import PROFILES, Setting
from cbmir.cell.extract import EmbeddingModule
from cbmir.cell.run import make_loader

TINY = ["model.arch=test_resnet.r160_in1k", "model.dim=96", "model.name=tiny_resnet"]


def tiny_env(tmp_path, device: str = "cpu") -> Env:
    return Env(torch.device(device), "32-true", 0, tmp_path, overrides=list(TINY))


def test_data_path_builds_no_pil_images_and_preprocesses_on_the_module_device(tmp_path, monkeypatch):
    from PIL import Image

    import cbmir.cell.extract as extract

    def forbidden(*args, **kwargs):
        raise AssertionError("the extraction path built a PIL image")

    for name in ("fromarray", "open", "frombuffer", "frombytes", "new"):
        monkeypatch.setattr(Image, name, forbidden)
    seen = []
    real_preprocess = extract.preprocess

    def spy(images, spec, **kwargs):
        out = real_preprocess(images, spec, **kwargs)
        seen.append((images.dtype, tuple(images.shape[1:]), images.device, out.device))
        return out

    monkeypatch.setattr(extract, "preprocess", spy)
    env = tiny_env(tmp_path)
    backbone, _cfg = build(env, "resnet50")
    _folder, split = synthetic_split(tmp_path / "data", "pathmnist", 28, (28, 28, 3), 20)

    # 1. the real extraction (Trainer.predict, make_loader, EmbeddingModule, EmbeddingWriter) on the CPU
    _seconds, steady, emb = pipeline_run(env, backbone, split, batch=8, min_source=32, keep=True)
    assert emb.shape == (20, 96) and steady > 0
    assert len(seen) == 3  # one preprocess call per batch: 8 + 8 + 4
    for dtype, shape, device_in, device_out in seen:
        # raw uint8 pixels reach the module: the loader did no per-image work
        assert dtype == torch.uint8 and shape == (28, 28, 3)
        assert device_in == device_out == torch.device("cpu")

    # 2. a module on another device preprocesses there: nothing in preprocess pins the CPU
    index, images, labels = next(iter(make_loader(split, 8, env.workers)))
    assert images.dtype == torch.uint8 and images.shape == (8, 28, 28, 3)
    module = EmbeddingModule(copy.deepcopy(backbone), min_source_size=32).to("meta")
    out = module.predict_step((index, images.to("meta"), labels), 0)
    assert out["embedding"].device.type == "meta" and out["embedding"].shape == (8, 96)
    assert seen[-1][2].type == seen[-1][3].type == "meta"

    # the patch is live: the conventional baseline, which does build PIL images, trips it
    transform = conventional_transform(backbone.preprocess, source=28, min_source=32, crop=None)
    with pytest.raises(AssertionError, match="PIL image"):
        conventional_run(env, backbone.net, split, transform, batch=8)


def test_setting_comparison_reports_paired_rounds_and_agreement(tmp_path):
    profile = replace(PROFILES["quick"], min_rounds=6, max_rounds=6, warmup=0)
    out = bench_setting(tiny_env(tmp_path), Setting("resnet50", 28, None), profile, config_batch=16, batches=3)
    assert out["input_size"] == 32 and out["preprocessed_shape"] == [3, 32, 32]  # 28 -> 32, as the study
    assert out["images_per_run"] == 48 and out["batches_per_run"] == 3 and out["rounds"] == 6
    # every ratio is the median of the per-round ratios, and each round's ratio is of that round's own timings
    secs = out["seconds"]
    per_round = [m / p for p, m in zip(secs["pipeline"], secs["model"])]
    assert out["samples"]["pipeline_efficiency"] == pytest.approx(per_round)
    assert out["pipeline_efficiency"] == pytest.approx(float(np.median(per_round)))
    lo, hi = out["pipeline_efficiency_ci"]
    assert (lo, hi) == pytest.approx((min(per_round), max(per_round)))  # 6 rounds: the order-statistic interval
    for name in ("pipeline", "model", "conventional"):
        assert out["rate_per_s"][name] == pytest.approx(float(np.median([48 / t for t in secs[name]])))
    # both paths embed the same images the same way (torch vs PIL bilinear upsampling differ by rounding only)
    assert out["min_cosine_pipeline_vs_conventional"] > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_preprocessing_runs_on_the_gpu(tmp_path, monkeypatch):
    import cbmir.cell.extract as extract

    devices = []
    real_preprocess = extract.preprocess
    monkeypatch.setattr(
        extract,
        "preprocess",
        lambda images, spec, **kw: devices.append(images.device) or real_preprocess(images, spec, **kw),
    )
    env = tiny_env(tmp_path, "cuda")
    backbone, _cfg = build(env, "resnet50")
    _folder, split = synthetic_split(tmp_path / "data", "pathmnist", 28, (28, 28, 3), 16)
    pipeline_run(env, backbone, split, batch=8, min_source=32)
    assert devices and all(d.type == "cuda" for d in devices)
