"""The foundation models: every YAML builds with its documented width, hub errors say what to do, local
weights round-trip, the generic timm/open_clip entries, and one cell end to end.

Large towers (ViT-L/H/g, So400m, ViT-g-14) are built on the ``meta`` device: shapes and widths without
memory or time. Equivalence with the official implementations lives in test_models_conch.py,
test_models_medclip.py, test_models_biomedclip.py and test_models_hf_vit.py.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from cbmir.errors import ConfigError, WeightsError
from cbmir.models import build_backbone, families
from tests.helpers.config import CONF_DIR, model_cfg

#: model → (embedding width, unit norm): the values the YAML comments document.
FOUNDATION = {
    "uni": (1024, False),
    "conch": (512, True),
    "biomedclip": (512, True),
    "openclip": (1024, False),
    "medclip": (512, True),
    "uni2h": (1536, False),
    "conch15": (768, False),
    "virchow2": (2560, False),
    "hoptimus0": (1536, False),
    "gigapath": (1536, False),
    "phikon2": (1024, False),
    "dinov2_s": (384, False),
    "dinov2_b": (768, False),
    "dinov2_l": (1024, False),
    "dinov2_g": (1536, False),
    "raddino": (768, False),
    "medsiglip": (1152, False),
}
GATED = {
    "uni": "MahmoodLab/UNI",
    "conch": "MahmoodLab/CONCH",
    "uni2h": "MahmoodLab/UNI2-h",
    "conch15": "MahmoodLab/conchv1_5",
    "virchow2": "paige-ai/Virchow2",
    "hoptimus0": "bioptimus/H-optimus-0",
    "gigapath": "prov-gigapath/prov-gigapath",
    "medsiglip": "google/medsiglip-448",
}


def hub_error(name: str, message: str):
    """A huggingface_hub exception as ``hf_hub_download`` raises it (HTTP errors carry a response)."""
    import huggingface_hub.errors as hfe

    cls = getattr(hfe, name)
    if issubclass(cls, hfe.HfHubHTTPError):
        http = importlib.import_module(hfe.Response.__module__.split(".")[0])
        response = http.Response(401, request=http.Request("GET", "https://huggingface.co/x/resolve/main/y"))
        return cls(message, response=response)
    return cls(message)


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_every_model_builds_with_its_documented_width(name):
    dim, unit = FOUNDATION[name]
    cfg = model_cfg(name, pretrained=False)
    assert cfg.name == name and cfg.dim == dim and cfg.family in families()
    text = (CONF_DIR / "model" / f"{name}.yaml").read_text()
    assert text.startswith("#") and "Embedding" in text and "Preprocess" in text
    with torch.device("meta"):
        bb = build_backbone(cfg)
        size = bb.preprocess.input_size
        out = bb.net(torch.zeros(2, 3, size, size))  # the extractor always feeds 3 channels
    assert tuple(out.shape) == (2, dim) and bb.dim == dim and bb.unit_norm == unit
    assert bb.identity["weights"] == "random"
    assert not bb.net.training and not any(p.requires_grad for p in bb.net.parameters())


def test_study_preprocessing_specs():
    def spec(name):
        with torch.device("meta"):
            return build_backbone(model_cfg(name, pretrained=False)).preprocess

    openai = (0.48145466, 0.4578275, 0.40821073)
    assert spec("uni").as_dict() == {
        "input_size": 224,
        "min_size": 1,
        "resize": "resize",
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "grayscale": False,
    }
    for name, size in (("conch", 448), ("biomedclip", 224), ("openclip", 224)):
        s = spec(name)
        assert (s.input_size, s.resize, s.interpolation, s.mean) == (size, "resize_crop", "bicubic", openai)
    s = spec("medclip")
    assert (s.resize, s.grayscale, s.mean, s.std) == ("pad", True, (0.5862785803043838,), (0.27950088968644304,))


def test_gigapath_resizes_to_256_and_crops_224_inside_the_net():
    from torchvision import transforms as T

    from cbmir.cell.extract import preprocess

    with torch.device("meta"):
        bb = build_backbone(model_cfg("gigapath", pretrained=False))
    assert bb.preprocess.input_size == 256 and bb.net[0].size == 224
    crop = bb.net[0]
    img = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    x = crop(preprocess(img, bb.preprocess))
    ref = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(
        T.CenterCrop(224)(
            torch.nn.functional.interpolate(
                img.permute(0, 3, 1, 2).float(), size=(256, 256), mode="bicubic", align_corners=False, antialias=True
            ).clamp(0, 255)
        )
        / 255
    )
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- hub errors


@pytest.mark.parametrize("name", sorted(GATED))
def test_gated_repository_without_access(monkeypatch, name):
    import huggingface_hub

    def denied(repo_id, filename, **kwargs):
        raise hub_error("GatedRepoError", f"Access to model {repo_id} is restricted.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", denied)
    monkeypatch.setenv("HF_TOKEN", "hf_without_access")
    with pytest.raises(WeightsError) as err:
        build_backbone(model_cfg(name))
    msg = str(err.value)
    assert f"request access at https://huggingface.co/{GATED[name]}" in msg
    assert "HF_TOKEN" in msg and "model.weights=" in msg


def test_gated_repository_without_a_token(monkeypatch):
    import huggingface_hub

    def denied(repo_id, filename, **kwargs):
        assert kwargs.get("token") is None
        raise hub_error("GatedRepoError", "401 Unauthorized")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", denied)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(
        WeightsError, match=r"MahmoodLab/UNI is gated and no Hugging Face token is set.*set HF_TOKEN.*model\.weights="
    ):
        build_backbone(model_cfg("uni"))


@pytest.mark.parametrize("name", ["uni", "biomedclip", "phikon2", "dinov2_s", "openclip", "conch"])
def test_offline_without_cache(monkeypatch, name):
    import huggingface_hub

    def offline(repo_id, filename, **kwargs):
        raise hub_error("LocalEntryNotFoundError", "Cannot find the requested files in the disk cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match=r"not in the local hub cache.*connect once.*model\.weights="):
        build_backbone(model_cfg(name))


def test_really_offline_with_an_empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="model.weights="):
        build_backbone(model_cfg("dinov2_s"))


def test_hub_file_names_and_token(monkeypatch, tmp_path):
    """The default is the hub with the model's real repository, file and pinned revision."""
    import huggingface_hub

    seen = []

    def fake(repo_id, filename, *, revision=None, token=None, **kwargs):
        seen.append((repo_id, filename, revision, token))
        raise hub_error("LocalEntryNotFoundError", "not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    for name in ("uni", "conch", "conch15", "phikon2", "raddino", "openclip", "dinov2_g"):
        with pytest.raises(WeightsError):
            build_backbone(model_cfg(name))
    assert seen == [
        ("MahmoodLab/UNI", "pytorch_model.bin", None, "hf_abc"),
        ("MahmoodLab/CONCH", "pytorch_model.bin", None, "hf_abc"),
        ("MahmoodLab/conchv1_5", "pytorch_model_vision.bin", None, "hf_abc"),
        ("owkin/phikon-v2", "model.safetensors", "419e8285b80eac3b60beca0d9b91942d48ad7b8e", "hf_abc"),
        ("microsoft/rad-dino", "model.safetensors", "d9eb255c50aad4c3967dcb57e3dbd21e40b40f4a", "hf_abc"),
        ("laion/CLIP-ViT-g-14-laion2B-s34B-b88K", "open_clip_model.safetensors", None, "hf_abc"),
        ("timm/vit_giant_patch14_dinov2.lvd142m", "model.safetensors", None, "hf_abc"),
    ]


def test_missing_file_and_unexpected_keys(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_backbone(model_cfg("uni", weights=str(tmp_path / "nope.bin")))
    torch.manual_seed(0)
    sd = build_backbone(model_cfg("dinov2_s", pretrained=False)).net.state_dict()
    torch.save({**sd, "head.weight": torch.zeros(2, 384)}, tmp_path / "extra.bin")
    with pytest.raises(WeightsError, match=r"unexpected keys \[head\.weight\]"):
        build_backbone(model_cfg("dinov2_s", weights=str(tmp_path / "extra.bin")))
    del sd["blocks.3.mlp.fc1.weight"]
    torch.save(sd, tmp_path / "missing.bin")
    with pytest.raises(WeightsError, match=r"missing keys \[blocks\.3\.mlp\.fc1\.weight\]"):
        build_backbone(model_cfg("dinov2_s", weights=str(tmp_path / "missing.bin")))


@pytest.mark.parametrize("fmt", ["model.safetensors", "pytorch_model.bin"])
def test_local_weights_round_trip(tmp_path, fmt):
    torch.manual_seed(3)
    original = build_backbone(model_cfg("dinov2_s", pretrained=False))
    sd = original.net.state_dict()
    if fmt.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(tmp_path / fmt))
    else:
        torch.save(sd, tmp_path / fmt)
    loaded = build_backbone(model_cfg("dinov2_s", weights=str(tmp_path)))  # a folder holding the file
    assert loaded.identity["weights"].startswith(f"{fmt}:")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), original.net(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- generic entries


def test_generic_timm_uses_the_models_own_config():
    bb = build_backbone(model_cfg("timm", arch="test_vit.r160_in1k", pretrained=False))
    # test_vit.r160_in1k: 160 px, crop_pct 0.95, bicubic, mean/std 0.5
    assert (bb.preprocess.input_size, bb.preprocess.resize, bb.preprocess.interpolation) == (
        168,
        "resize_crop",
        "bicubic",
    )
    assert bb.preprocess.mean == (0.5, 0.5, 0.5) and bb.net[0].size == 160
    with torch.no_grad():
        out = bb.net(torch.zeros(1, 3, 168, 168))
    assert out.shape == (1, bb.dim) and bb.identity["arch"] == "test_vit.r160_in1k"


def test_generic_entries_need_an_arch_and_a_safe_name():
    with pytest.raises(ConfigError, match="model.arch"):
        build_backbone(model_cfg("timm", pretrained=False))
    with pytest.raises(ConfigError, match="model.arch"):
        build_backbone(model_cfg("open_clip", pretrained=False))
    with pytest.raises(ConfigError, match="result folder"):
        build_backbone(model_cfg("timm", name="hf-hub:org/model", arch="test_vit.r160_in1k", pretrained=False))


def test_generic_open_clip_is_encode_image(tmp_path):
    import open_clip

    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    bb = build_backbone(model_cfg("open_clip", name="vit_s32", arch="ViT-S-32", normalize=True, weights=str(tmp_path)))
    assert bb.dim == 384 and bb.unit_norm and bb.preprocess.input_size == 224
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(bb.net(x), reference.encode_image(x, normalize=True))
    sd = reference.state_dict()
    del sd["visual.proj"]
    torch.save(sd, tmp_path / "broken.bin")
    with pytest.raises(WeightsError, match="visual.proj"):
        build_backbone(model_cfg("open_clip", arch="ViT-S-32", weights=str(tmp_path / "broken.bin")))


def test_generic_open_clip_from_a_hub_repository(tmp_path, monkeypatch):
    """model.tag=hf-hub:org/repo: the repository's open_clip_config.json and weights (download faked)."""
    import huggingface_hub
    import open_clip

    torch.manual_seed(1)
    reference = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": open_clip.get_model_config("ViT-S-32"),
                "preprocess_cfg": {
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.5, 0.5, 0.5],
                    "interpolation": "bilinear",
                    "resize_mode": "squash",
                },
            }
        )
    )
    seen = []

    def fake(repo_id, filename, **kwargs):
        seen.append((repo_id, filename))
        if not (tmp_path / filename).exists():
            raise hub_error("RemoteEntryNotFoundError", f"{filename} not found")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    bb = build_backbone(model_cfg("open_clip", tag="hf-hub:someone/clip-s32"))
    assert seen == [
        ("someone/clip-s32", "open_clip_config.json"),
        ("someone/clip-s32", "open_clip_model.safetensors"),
        ("someone/clip-s32", "open_clip_pytorch_model.bin"),
    ]
    s = bb.preprocess
    assert (s.input_size, s.resize, s.interpolation, s.mean) == (224, "resize", "bilinear", (0.5, 0.5, 0.5))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(bb.net(x), reference.encode_image(x))


# ---------------------------------------------------------------------------------------------- one cell


@pytest.mark.slow  # a full-size network on 2 CPU cores: half a minute or more
def test_medclip_cell_end_to_end(cell_cfg):
    """A foundation model (random weights) through the real cell: grayscale + pad preprocessing, 512-d unit norm."""
    from cbmir.cell.run import run_cell

    cfg = cell_cfg("model=medclip", "dataset=bloodmnist", tiny=False)
    result = run_cell(cfg)
    assert result["model"] == "medclip" and result["embedding_dim"] == 512
    db = np.load(result["embeddings"]["database"])
    assert db.shape == (24, 512)
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1.0, atol=1e-5)
    assert json.loads(json.dumps(result))["metrics"]
