"""Device-side preprocessing and the EmbeddingModule."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cbmir.cell.extract import EmbeddingModule, preprocess, to_nchw
from cbmir.models.base import Backbone, Preprocess


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
    assert x[0, 0, :top].abs().sum() == 0 and x[0, 0, top + 28 :].abs().sum() == 0


def test_grayscale_spec_uses_luma():
    rgb = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    x = preprocess(rgb, Preprocess(grayscale=True, mean=(0.0,), std=(1.0,)))
    luma = ((19595 * 100 + 38470 * 50 + 7471 * 200 + 32768) >> 16) / 255
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


# --- 3D: volumes through 2D backbones -------------------------------------------------------

from cbmir.cell.extract import VolumeSpec, volume_slices  # noqa: E402
from cbmir.errors import ConfigError  # noqa: E402


class SliceNet(torch.nn.Module):
    """A tiny backbone whose embedding depends on every pixel, so slice order and content matter."""

    def __init__(self, d=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, d, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def volume_module(aggregate="concat", planes="axial", max_forward_batch=7):
    bb = Backbone(net=SliceNet().eval(), preprocess=Preprocess(), dim=4, unit_norm=False)
    return EmbeddingModule(bb, volume=VolumeSpec(aggregate, planes), max_forward_batch=max_forward_batch)


def volumes(n=3, side=8, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, side, side, side), dtype=np.uint8))


@pytest.mark.parametrize(
    "aggregate,planes,dim",
    [("concat", "axial", 8 * 4), ("concat", "tri", 3 * 8 * 4), ("mean", "axial", 4), ("max", "tri", 4)],
)
def test_volume_embedding_dims(aggregate, planes, dim):
    assert VolumeSpec(aggregate, planes).embedding_dim(4, 8) == dim
    with torch.no_grad():
        assert volume_module(aggregate, planes)(volumes()).shape == (3, dim)


def test_batched_slices_equal_one_slice_per_forward():
    module = volume_module("concat", "tri", max_forward_batch=7)  # 72 slices -> 11 chunks
    vols = volumes()
    with torch.no_grad():
        batched = module(vols)
        reference = torch.stack(
            [torch.cat([module.embed_images(s[None])[0] for s in volume_slices(v[None], "tri")[0]]) for v in vols]
        )
    torch.testing.assert_close(batched, reference)


def test_mean_and_max_pool_the_slice_embeddings():
    vols = volumes()
    with torch.no_grad():
        per_slice = volume_module("concat")(vols).view(3, 8, 4)
        torch.testing.assert_close(volume_module("mean")(vols), per_slice.mean(1))
        torch.testing.assert_close(volume_module("max")(vols), per_slice.amax(1))


def test_slice_order_matters_only_for_concat():
    vols = volumes()
    flipped = vols.flip(1)
    with torch.no_grad():
        assert not torch.allclose(volume_module("concat")(vols), volume_module("concat")(flipped))
        torch.testing.assert_close(volume_module("mean")(vols), volume_module("mean")(flipped))


def test_tri_planes_slice_all_three_axes():
    v = torch.arange(2 * 3 * 3 * 3).reshape(2, 3, 3, 3)
    s = volume_slices(v, "tri")
    assert s.shape == (2, 9, 3, 3)
    assert torch.equal(s[:, 0], v[:, 0]) and torch.equal(s[:, 3], v[:, :, 0]) and torch.equal(s[:, 6], v[:, :, :, 0])


def test_bad_volume_options():
    with pytest.raises(ConfigError, match="aggregate"):
        VolumeSpec("sum")
    with pytest.raises(ConfigError, match="planes"):
        VolumeSpec("mean", "coronal")


@pytest.mark.parametrize("interp,size,src", [("bicubic", 224, 28), ("bicubic", 448, 64), ("bilinear", 224, 128)])
def test_batched_resize_matches_pil_within_1_5_gray_levels(interp, size, src):
    """The reference transforms (PIL Resize + CenterCrop + ToTensor + Normalize) round to uint8; we do not."""
    from PIL import Image
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (src // 4 + 1, src // 4 + 1, 3)).astype(np.uint8)
    img = np.array(Image.fromarray(base).resize((src, src), Image.BILINEAR))
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    spec = Preprocess(input_size=size, resize="resize_crop", interpolation=interp, mean=mean, std=std)
    mode = getattr(T.InterpolationMode, interp.upper())
    ref = T.Compose([T.Resize(size, interpolation=mode), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    diff = (preprocess(torch.from_numpy(img)[None], spec)[0] - ref(Image.fromarray(img))).abs()
    assert diff.max() <= 1.5 / 255 / min(std)
    assert diff.mean() < 0.006
