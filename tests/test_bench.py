"""The benchmark harness: a quick run yields every figure, the data path never builds PIL images,
and preprocessing runs on the module's device."""

import copy
import json
import math

import pytest
import torch

from cbmir import bench
from cbmir.cell import make_loader
from cbmir.extract import EmbeddingModule

TINY = [
    "--override",
    "model.arch=test_resnet.r160_in1k",
    "--override",
    "model.dim=96",
    "--override",
    "model.name=tiny_resnet",
]
FIGURES = (
    "pipeline_efficiency",
    "speedup_vs_conventional",
    "speedup_3d_batched",
    "speedup_search",
    "cache_speedup",
    "peak_rss_gb",
)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_bench_produces_every_figure(tmp_path, capsys):
    out = tmp_path / "bench" / "bench.json"
    # --warmup 0 keeps the suite fast; the figures only need to be sane here
    bench.main(["--quick", "--warmup", "0", "--device", "cpu", *TINY, "--out", str(out), "--tmp-dir", str(tmp_path)])
    result = json.loads(out.read_text())

    for key in FIGURES:
        assert positive(result[key]), (key, result[key])
    assert result["device"] == "cpu" and result["threads"] >= 1 and result["precision"] == "32-true"
    assert result["quick"] and result["repeats"] == 1 and result["weights"] == "random"
    assert {"torch", "timm", "lightning", "faiss", "numpy"} <= set(result["versions"])
    assert set(result["targets"]) == set(bench.TARGETS)

    (setting,) = result["settings"]
    assert setting["input_size"] == 32 and setting["preprocessed_shape"] == [3, 32, 32]  # 28 -> 32, as the study
    for name in ("pipeline", "model", "conventional"):
        assert positive(setting["images_per_s"][name])
    # both paths embed the same images the same way (torch vs PIL bilinear upsampling differ by rounding only)
    assert setting["min_cosine_pipeline_vs_conventional"] > 0.99
    v = result["volume_3d"]
    assert v["side"] == 32 and v["slices"] == 64 and v["max_rel_diff_batched_vs_per_slice"] < 1e-3
    assert result["search"]["dim"] == 2048 and result["search"]["top1_agreement"] >= 0.9
    assert result["cache"]["seconds_cold"][0] > result["cache"]["seconds_cached"][0] > 0
    m = result["memory"]
    assert m["images"] == 256 and m["peak_rss_gb"] >= m["baseline_rss_gb"] > 0
    printed = capsys.readouterr().out
    assert "pipeline img/s" in printed and "targets:" in printed


def test_data_path_builds_no_pil_images_and_preprocesses_on_the_module_device(tmp_path, monkeypatch):
    from PIL import Image

    import cbmir.extract as extract

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

    args = bench.parse_args(["--quick", "--device", "cpu", "--num-workers", "0", *TINY])
    env = bench.Env(args, tmp_path)
    backbone, cfg = bench.build(env, "resnet50")
    _folder, split = bench.synthetic_split(tmp_path / "data", "pathmnist", 28, (28, 28, 3), 20)

    # 1. the real extraction (Trainer.predict, make_loader, EmbeddingModule, EmbeddingWriter) on the CPU
    _seconds, _steady, emb = bench.pipeline_run(env, backbone, split, batch=8, min_source=32, keep=True)
    assert emb.shape == (20, 96)
    assert len(seen) == 3  # one preprocess call per batch: 8 + 8 + 4
    for dtype, shape, device_in, device_out in seen:
        # raw uint8 pixels reach the module: the loader did no per-image work
        assert dtype == torch.uint8 and shape == (28, 28, 3)
        assert device_in == device_out == torch.device("cpu")

    # 2. a module on another device preprocesses there: nothing in preprocess pins the CPU
    loader = make_loader(split, env.cfg(8))
    index, images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (8, 28, 28, 3)
    module = EmbeddingModule(copy.deepcopy(backbone), min_source_size=32).to("meta")
    out = module.predict_step((index, images.to("meta"), labels), 0)
    assert out["embedding"].device.type == "meta" and out["embedding"].shape == (8, 96)
    assert seen[-1][2].type == seen[-1][3].type == "meta"

    # the patch is live: the conventional baseline, which does build PIL images, trips it
    transform = bench.conventional_transform(backbone.preprocess, source=28, min_source=32, crop=None)
    with pytest.raises(AssertionError, match="PIL image"):
        bench.conventional_run(env, backbone.net, split, transform, batch=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_preprocessing_runs_on_the_gpu(tmp_path, monkeypatch):
    import cbmir.extract as extract

    devices = []
    real_preprocess = extract.preprocess
    monkeypatch.setattr(
        extract,
        "preprocess",
        lambda images, spec, **kw: devices.append(images.device) or real_preprocess(images, spec, **kw),
    )
    args = bench.parse_args(["--quick", "--device", "cuda", "--num-workers", "0", *TINY])
    env = bench.Env(args, tmp_path)
    backbone, _cfg = bench.build(env, "resnet50")
    _folder, split = bench.synthetic_split(tmp_path / "data", "pathmnist", 28, (28, 28, 3), 16)
    bench.pipeline_run(env, backbone, split, batch=8, min_source=32)
    assert devices and all(d.type == "cuda" for d in devices)


def test_settings_parse():
    assert bench.parse_setting("resnet50,28,32") == bench.Setting("resnet50", 28, 32, None)
    assert bench.parse_setting("timm=vit_base_patch16_224,64,auto,16") == bench.Setting(
        "timm=vit_base_patch16_224", 64, None, 16
    )
    with pytest.raises(Exception):
        bench.parse_setting("resnet50,28")
    args = bench.parse_args(["--model", "resnet50", "--input-size", "32", "224", "--device", "cpu"])
    assert [(s.model, s.source, s.input) for s in args.settings] == [("resnet50", 28, 32), ("resnet50", 28, 224)]
    assert str(args.out).endswith("outputs/bench/bench.json") and not args.pretrained
    assert [s.model for s in bench.parse_args(["--device", "cpu"]).settings] == [
        bench.parse_setting(s).model for s in bench.DEFAULT_SETTINGS
    ]
