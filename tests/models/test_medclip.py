"""MedCLIP-ViT against the official implementation (goldens from PyPI ``medclip==0.0.3`` + ``transformers==4.24.0``).

tests/golden/medclip.npz holds, for seeded weights in the released layout (tests/golden/medclip_keys.json):
``MedCLIPModel.encode_image`` (= ``outputs['img_embeds']``) of seeded inputs, the official
``MedCLIPFeatureExtractor`` output for three small synthetic images (grayscale via luma, zero-padding to
224, no resampling) and the embeddings of those processed images. cbmir's timm Swin + key map + batched
torch preprocessing must reproduce them within 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cbmir.cell.extract import preprocess
from cbmir.errors import WeightsError
from cbmir.models import build_backbone
from tests.helpers.config import GOLDEN, model_cfg
from tests.helpers.golden_recipe import recipe

IMAGES = {"rgb28": (28, 28, "RGB", 1), "l64": (64, 64, "L", 2), "rgb30x40": (30, 40, "RGB", 5)}


@pytest.fixture(scope="module")
def medclip_dir(tmp_path_factory):
    """Upstream's unzipped layout: <dir>/medclip-vit-pretrained/pytorch_model.bin with the whole model."""
    r = recipe()
    layout = json.loads((GOLDEN / "medclip_keys.json").read_text())
    sd = r.seeded_state_dict(layout)
    sd["text_model.projection_head.weight"] = r.seeded_tensor("text_model.projection_head.weight", (512, 768))
    sd["logit_scale"] = torch.tensor(3.0)
    root = tmp_path_factory.mktemp("medclip")
    (root / "medclip-vit-pretrained").mkdir()
    torch.save(sd, root / "medclip-vit-pretrained" / "pytorch_model.bin")
    return root


@pytest.fixture(scope="module")
def backbone(medclip_dir):
    return build_backbone(model_cfg("medclip", weights=str(medclip_dir)))


def test_medclip_equals_official_img_embeds(backbone):
    golden = np.load(GOLDEN / "medclip.npz")
    assert backbone.dim == 512 and backbone.unit_norm
    x = recipe().model_input((3, 1, 224, 224))
    with torch.no_grad():
        out = backbone.net(x)
        np.testing.assert_allclose(out.numpy(), golden["embedding"], rtol=0, atol=1e-5)
        torch.testing.assert_close(backbone.net(x.expand(-1, 3, -1, -1)), out, rtol=0, atol=0)  # 1 channel = repeat


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_medclip_processor_and_end_to_end(backbone, name):
    """Batched torch preprocessing (centred zero-padding, mean/std) against MedCLIPFeatureExtractor.

    Exact (≤1e-5) for gray and RGB input: ``cbmir.cell.extract.preprocess`` computes the luma with PIL's
    fixed-point ``convert('L')`` arithmetic.
    """
    from PIL import Image

    golden = np.load(GOLDEN / "medclip.npz")
    img = recipe().synthetic_image(*IMAGES[name])
    x = preprocess(torch.from_numpy(img)[None], backbone.preprocess)
    assert x.shape == (1, 3, 224, 224)
    diff = np.abs(x[:, :1].numpy() - golden[f"pixels_{name}"]).max()
    assert diff <= 1e-5, diff
    gray = np.array(Image.fromarray(img).convert("L"))  # PIL's integer luma: then the math is the same
    x = preprocess(torch.from_numpy(gray)[None], backbone.preprocess)
    np.testing.assert_allclose(x[:, :1].numpy(), golden[f"pixels_{name}"], rtol=0, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(backbone.net(x).numpy(), golden[f"e2e_{name}"], rtol=0, atol=1e-5)


def test_medclip_without_weights_says_where_to_get_them():
    with pytest.raises(
        WeightsError, match=r"not on the Hugging Face hub.*medclip-vit-pretrained\.zip.*model\.weights="
    ):
        build_backbone(model_cfg("medclip"))
    assert build_backbone(model_cfg("medclip", pretrained=False)).identity["weights"] == "random"


def test_medclip_incomplete_checkpoint_is_rejected(tmp_path):
    r = recipe()
    layout = json.loads((GOLDEN / "medclip_keys.json").read_text())
    sd = r.seeded_state_dict({k: v for k, v in layout.items() if "layers.3." not in k})
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="missing keys"):
        build_backbone(model_cfg("medclip", weights=str(tmp_path / "pytorch_model.bin")))
