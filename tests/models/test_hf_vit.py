"""Phikon-v2 / RAD-DINO (transformers ``Dinov2Model``) and MedSigLIP (``SiglipVisionModel``) without transformers.

tests/golden/hf_vit.npz was produced by scripts/make_golden.py with transformers 5.24: small towers of the same
classes (2 layers, width 64, 56 px; the configs are stored in the file) loaded by ``from_pretrained`` from
seeded checkpoints in the layout the hub files use (transformers 4.x names; ``from_pretrained`` reported no
missing or unexpected key). cbmir loads the same files into timm through its key maps, strictly, via the real
YAMLs with the sizes overridden: the key maps do not depend on the sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from cbmir.errors import ConfigError, WeightsError
from cbmir.models import build_backbone
from cbmir.models.timm_vit import preprocess_from_hf
from tests.helpers.config import GOLDEN, model_cfg
from tests.helpers.golden_recipe import recipe

SMALL_DINOV2 = {"img_size": 56, "patch_size": 14, "embed_dim": 64, "depth": 2, "num_heads": 4, "init_values": 1.0}
SMALL_SIGLIP = {"img_size": 56, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "act_layer": "gelu_tanh"}
SMALL_PRE = {"size": 56, "resize": "resize", "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}


def small_cfg(name: str, **over):
    cfg = model_cfg(name)
    cfg.dim = None
    cfg.preprocess = SMALL_PRE
    return OmegaConf.merge(cfg, over)


def dinov2_files(folder: Path, rename=None) -> Path:
    sd = recipe().seeded_state_dict(json.loads((GOLDEN / "hf_dinov2_keys.json").read_text()))
    if rename:
        sd = {rename(k): v for k, v in sd.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("name", ["raddino", "phikon2"])
def test_dinov2_models_equal_transformers(tmp_path, name):
    golden = np.load(GOLDEN / "hf_vit.npz")
    folder = dinov2_files(tmp_path / "w")
    bb = build_backbone(small_cfg(name, kwargs=SMALL_DINOV2, weights=str(folder)))
    with torch.no_grad():
        out = bb.net(recipe().model_input((2, 3, 56, 56)))
    np.testing.assert_allclose(out.numpy(), golden["dinov2_cls"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.numpy(), golden["dinov2_pooler"], rtol=0, atol=1e-5)  # pooler = layernormed CLS


def test_dinov2_transformers5_names_load_too(tmp_path):
    def v5(key: str) -> str:
        for old, new in (
            ("attention.attention.query", "attention.q_proj"),
            ("attention.attention.key", "attention.k_proj"),
            ("attention.attention.value", "attention.v_proj"),
            ("attention.output.dense", "attention.o_proj"),
        ):
            key = key.replace(old, new)
        return key

    golden = np.load(GOLDEN / "hf_vit.npz")
    bb = build_backbone(small_cfg("raddino", kwargs=SMALL_DINOV2, weights=str(dinov2_files(tmp_path, v5))))
    with torch.no_grad():
        np.testing.assert_allclose(
            bb.net(recipe().model_input((2, 3, 56, 56))).numpy(), golden["dinov2_cls"], atol=1e-5, rtol=0
        )


def siglip_state_dict():
    r = recipe()
    sd = r.seeded_state_dict(json.loads((GOLDEN / "hf_siglip_keys.json").read_text()))
    # a full SiglipModel file also holds the text tower and the logit scale/bias: dropped
    sd["text_model.embeddings.token_embedding.weight"] = torch.zeros(8, 64)
    sd["logit_scale"], sd["logit_bias"] = torch.zeros(1), torch.zeros(1)
    return sd


def test_medsiglip_equals_transformers_get_image_features(tmp_path):
    golden = np.load(GOLDEN / "hf_vit.npz")
    save_file(siglip_state_dict(), str(tmp_path / "model.safetensors"))
    bb = build_backbone(small_cfg("medsiglip", kwargs=SMALL_SIGLIP, weights=str(tmp_path / "model.safetensors")))
    assert bb.dim == 64 and not bb.unit_norm
    with torch.no_grad():
        out = bb.net(recipe().model_input((2, 3, 56, 56)))
    np.testing.assert_allclose(out.numpy(), golden["siglip_pooled"], rtol=0, atol=1e-5)


def test_sharded_safetensors_checkpoint(tmp_path):
    """A folder with model.safetensors.index.json and its shards (as large hub checkpoints are stored)."""
    sd = siglip_state_dict()
    keys = sorted(sd)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for shard, names in shards.items():
        save_file({k: sd[k] for k in names}, str(tmp_path / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, names in shards.items() for k in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    golden = np.load(GOLDEN / "hf_vit.npz")
    bb = build_backbone(small_cfg("medsiglip", kwargs=SMALL_SIGLIP, weights=str(tmp_path)))
    with torch.no_grad():
        np.testing.assert_allclose(
            bb.net(recipe().model_input((2, 3, 56, 56))).numpy(), golden["siglip_pooled"], atol=1e-5, rtol=0
        )


def test_wrong_size_checkpoint_is_rejected(tmp_path):
    folder = dinov2_files(tmp_path / "w")
    wider = {**SMALL_DINOV2, "embed_dim": 96, "num_heads": 4}
    with pytest.raises(WeightsError, match="does not (match|fit)"):
        build_backbone(small_cfg("raddino", kwargs=wider, weights=str(folder)))


def test_preprocessor_config_beside_the_weights_sets_the_preprocessing(tmp_path):
    folder = dinov2_files(tmp_path / "w")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "BitImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": 64},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": 56, "width": 56},
                "do_rescale": True,
                "rescale_factor": 0.00392156862745098,
                "do_normalize": True,
                "image_mean": [0.5307, 0.5307, 0.5307],
                "image_std": [0.2583, 0.2583, 0.2583],
            }
        )
    )
    bb = build_backbone(small_cfg("raddino", kwargs=SMALL_DINOV2, weights=str(folder)))
    spec = bb.preprocess
    assert (spec.input_size, spec.resize, spec.interpolation, spec.mean) == (
        64,
        "resize_crop",
        "bicubic",
        (0.5307,) * 3,
    )
    assert bb.identity["preprocess_from"] == "preprocessor_config.json"
    assert isinstance(bb.net, torch.nn.Sequential) and bb.net[0].size == 56  # Resize(64) + CenterCrop(56)
    with torch.no_grad():
        assert bb.net(torch.zeros(1, 3, 64, 64)).shape == (1, 64)


def test_preprocess_from_hf_variants():
    siglip = {
        "do_resize": True,
        "size": {"height": 448, "width": 448},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    spec, crop = preprocess_from_hf(siglip)
    assert (spec.input_size, spec.resize, spec.interpolation, crop) == (448, "resize", "bicubic", None)
    spec, crop = preprocess_from_hf(
        {**siglip, "size": {"shortest_edge": 256}, "resample": 2, "do_center_crop": True, "crop_size": 224}
    )
    assert (spec.input_size, spec.resize, spec.interpolation, crop) == (256, "resize_crop", "bilinear", 224)
    with pytest.raises(ConfigError):
        preprocess_from_hf({**siglip, "resample": 1})  # LANCZOS
