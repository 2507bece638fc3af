"""The four CNNs of the study: architecture, embedding width, and local checkpoints."""

import pytest
import timm
import torch

from cbmir.errors import ConfigError, WeightsError
from cbmir.models import build_backbone
from tests.helpers.config import model_cfg


def cnn_cfg(name: str, *, from_hub: bool = False, **over):
    """A model config with random weights, or (``from_hub``) with the hub weights that offline tests must not reach."""
    return model_cfg(name, pretrained=from_hub, **over)


@pytest.mark.parametrize(
    "name,dim", [("vgg19", 512), ("resnet50", 2048), ("densenet121", 1024), ("efficientnetv2_m", 1280)]
)
def test_cnn_gap_of_last_conv_block(name, dim):
    torch.manual_seed(0)
    bb = build_backbone(cnn_cfg(name))
    assert bb.dim == dim and not bb.unit_norm
    assert bb.preprocess.input_size is None and bb.preprocess.min_size == 32  # runs at the cell's size
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        emb = bb.net(x)
        ref = bb.net.model.forward_features(x).mean((2, 3))
    assert emb.shape == (2, dim)
    torch.testing.assert_close(emb, ref)
    assert not any(p.requires_grad for p in bb.net.parameters()) and not bb.net.training


def test_efficientnetv2_uses_its_own_normalisation():
    assert build_backbone(cnn_cfg("efficientnetv2_m")).preprocess.mean == (0.5, 0.5, 0.5)
    assert build_backbone(cnn_cfg("resnet50", arch="test_resnet.r160_in1k", dim=96)).preprocess.mean == (
        0.5,
        0.5,
        0.5,
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_with_classifier_loads_as_is(tmp_path, suffix):
    # A copy of the hub's own file: the full model, classifier included.
    torch.manual_seed(1)
    full = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    sd = full.state_dict()
    assert any(k.startswith("fc.") for k in sd)
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    bb = build_backbone(cnn_cfg("resnet50", arch="test_resnet.r160_in1k", dim=96, weights=str(path)))
    loaded = bb.net.model.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, sd[key], rtol=0, atol=0)
    assert bb.identity["weights"].startswith(path.name)
    x = torch.randn(1, 3, 32, 32)
    full.eval()
    with torch.no_grad():
        torch.testing.assert_close(bb.net(x), full.forward_features(x).mean((2, 3)))


def test_local_checkpoint_of_another_architecture_is_rejected(tmp_path):
    torch.save(timm.create_model("test_efficientnet.r160_in1k").state_dict(), tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="does not fit"):
        build_backbone(cnn_cfg("resnet50", arch="test_resnet.r160_in1k", dim=96, weights=str(tmp_path / "w.pth")))


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"garbage")
    with pytest.raises(WeightsError):
        build_backbone(cnn_cfg("resnet50", arch="test_resnet.r160_in1k", dim=96, weights=str(tmp_path / "w.pth")))


def test_hub_offline_without_cache_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = cnn_cfg("resnet50", arch="test_resnet.r160_in1k", dim=96, from_hub=True)
    with pytest.raises(WeightsError, match="model.weights="):
        build_backbone(cfg)


def test_declared_dim_must_match():
    with pytest.raises(ConfigError, match="dim=7"):
        build_backbone(cnn_cfg("resnet50", arch="test_resnet.r160_in1k", dim=7))
