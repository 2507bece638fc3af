"""Device-side preprocessing and the EmbeddingModule."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cbmir.extract import EmbeddingModule, preprocess, to_nchw
from cbmir.models.registry import Backbone, Preprocess


def gray(n=2, size=28, value=None, seed=0):
    if value is not None:
        return torch.full((n, size, size), value, dtype=torch.uint8)
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8))


def test_to_nchw_layouts():
    assert to_nchw(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 1, 28, 28)
    rgb = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3)
    x = to_nchw(rgb)
    assert x.shape == (2, 3, 4, 4) and x[1, 2, 3, 1] == rgb[1, 3, 1, 2]


def test_normalisation_and_gray_to_rgb_exact():
    spec = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    x = preprocess(gray(value=51, size=32), spec)
    v = 51 / 255
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([(v - 0.5) / 0.5, (v - 0.25) / 0.25, v]))


def test_paper_28_to_32_is_bilinear_and_cnns_run_at_source_size():
    spec = Preprocess(input_size=None, min_size=32)
    imgs = gray()
    x = preprocess(imgs, spec, min_source_size=32)
    ref = F.interpolate(imgs.float().unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (ref.clamp(0, 255) / 255 - mean) / std)
    assert preprocess(gray(size=64), spec, min_source_size=32).shape[-1] == 64  # 64 runs at 64
    assert preprocess(gray(size=28), Preprocess(min_size=1), min_source_size=None).shape[-1] == 28


def test_min_size_guards_cnns_without_protocol_upsampling():
    assert preprocess(gray(size=28), Preprocess(input_size=None, min_size=32)).shape[-2:] == (32, 32)


def test_resize_crop_to_model_input():
    x = preprocess(gray(size=64), Preprocess(input_size=224, resize="resize_crop", interpolation="bicubic"))
    assert x.shape == (2, 3, 224, 224)
    # bicubic overshoot is clamped to the pixel range, as PIL does on uint8 images
    lo = (0 - 0.485) / 0.229
    hi = (1 - 0.406) / 0.225
    assert x.min() >= lo - 1e-5 and x.max() <= hi + 1e-5


def test_pad_pastes_centred_without_upsampling():
    imgs = gray(size=28, value=200)
    spec = Preprocess(input_size=224, resize="pad", interpolation="bicubic", grayscale=True, mean=(0.0,), std=(1.0,))
    x = preprocess(imgs, spec)
    assert x.shape == (2, 3, 224, 224)
    top = (224 - 28) // 2
    inside = x[0, 0, top : top + 28, top : top + 28]
    torch.testing.assert_close(inside, torch.full_like(inside, 200 / 255))
    assert x[0, 0, : top].abs().sum() == 0 and x[0, 0, top + 28 :].abs().sum() == 0


def test_grayscale_spec_uses_luma():
    rgb = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    x = preprocess(rgb, Preprocess(grayscale=True, mean=(0.0,), std=(1.0,)))
    luma = (0.299 * 100 + 0.587 * 50 + 0.114 * 200) / 255
    torch.testing.assert_close(x[0, :, 0, 0], torch.full((3,), luma))


def test_module_predict_step_returns_index_and_embedding():
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    module = EmbeddingModule(Backbone(net=net, preprocess=Preprocess(), dim=3, unit_norm=False), min_source_size=32)
    idx = torch.tensor([4, 9])
    out = module.predict_step((idx, gray(), torch.zeros(2, 1)), 0)
    assert out["index"] is idx and out["embedding"].shape == (2, 3) and out["embedding"].dtype == torch.float32


def test_preprocess_runs_on_the_inputs_device():
    # The module's device is where the batch is transferred; preprocess never moves data itself.
    x = preprocess(gray().to("meta"), Preprocess())
    assert x.device.type == "meta"


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="resize"):
        Preprocess(resize="stretch")
    with pytest.raises(ValueError, match="mean/std"):
        Preprocess(grayscale=True)
