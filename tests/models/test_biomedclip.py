"""BiomedCLIP's image tower against open_clip (the official implementation).

tests/golden/biomedclip.npz was produced by scripts/make_golden.py with open_clip_torch 3.3.0: the tower
that ``open_clip.model._build_vision_tower`` builds from the repository's vision config, with seeded weights
in the released layout (tests/golden/biomedclip_keys.json), L2-normalised as ``model(img, txt)[0]``. The same
open_clip is a project dependency, so the tests also compare in-process, bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cbmir.cell.extract import preprocess
from cbmir.models import build_backbone
from tests.helpers.config import GOLDEN, model_cfg
from tests.helpers.golden_recipe import recipe

REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    r = recipe()
    sd = r.seeded_state_dict(json.loads((GOLDEN / "biomedclip_keys.json").read_text()))
    full = {
        **sd,
        "text.transformer.embeddings.word_embeddings.weight": torch.zeros(4, 8),
        "logit_scale": torch.tensor(4.6),
    }
    folder = tmp_path_factory.mktemp("biomedclip")
    torch.save(full, folder / "open_clip_pytorch_model.bin")
    return folder, sd


@pytest.mark.slow  # a full-size network on 2 CPU cores: half a minute or more
def test_biomedclip_equals_open_clip(released):
    from open_clip.model import _build_vision_tower

    folder, sd = released
    golden = np.load(GOLDEN / "biomedclip.npz")
    bb = build_backbone(model_cfg("biomedclip", weights=str(folder)))
    assert bb.dim == 512 and bb.unit_norm
    x = recipe().model_input((2, 3, 224, 224))
    official = _build_vision_tower(512, recipe().BIOMEDCLIP_VISION_CFG).eval()
    official.load_state_dict({k[len("visual.") :]: v for k, v in sd.items()}, strict=True)
    with torch.no_grad():
        ours = bb.net(x)
        assert torch.equal(ours, F.normalize(official(x), dim=-1))  # the same math: bit for bit
    np.testing.assert_allclose(ours.numpy(), golden["embedding"], rtol=0, atol=1e-5)


def test_biomedclip_end_to_end_at_224(released):
    """A 224-px image needs no resampling: preprocessing + tower equal the official transform + tower."""
    folder, _ = released
    golden = np.load(GOLDEN / "biomedclip.npz")
    bb = build_backbone(model_cfg("biomedclip", weights=str(folder)))
    img = recipe().synthetic_image(224, 224, "RGB", 4)
    with torch.no_grad():
        out = bb.net(preprocess(torch.from_numpy(img)[None], bb.preprocess))
    np.testing.assert_allclose(out.numpy(), golden["e2e_224"], rtol=0, atol=1e-5)


def test_biomedclip_downloads_the_pinned_revision(released, monkeypatch):
    import huggingface_hub

    folder, _ = released
    calls = []

    def fake_download(repo_id, filename, *, revision=None, token=None, **kwargs):
        calls.append((repo_id, filename, revision, token))
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    bb = build_backbone(model_cfg("biomedclip"))
    assert calls == [(REPO, "open_clip_pytorch_model.bin", "f658b0b9eeca714b891d004b2d714c7ad3705170", "hf_test_token")]
    assert (
        bb.identity["weights"] == f"hf-hub:{REPO}/open_clip_pytorch_model.bin@f658b0b9eeca714b891d004b2d714c7ad3705170"
    )


def test_resampled_preprocessing_is_close_to_pil_but_not_exact():
    """Below 224 px the batched torch bicubic (a=-0.75, no antialias when enlarging, float output) differs from
    PIL's (a=-0.5, uint8 output). Measured on MedMNIST-like images: max |Δ| ≈ 0.26-0.32 and mean |Δ| ≈ 0.010-0.016
    after normalisation, embedding cosine ≥ 0.9993 through random weights. This guards those bounds."""
    from PIL import Image
    from torchvision import transforms as T

    r = recipe()
    with torch.device("meta"):
        spec = build_backbone(model_cfg("biomedclip", pretrained=False)).preprocess
    ref = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(r.OPENAI_MEAN, r.OPENAI_STD),
        ]
    )
    for size in (28, 64, 128):
        img = r.synthetic_image(size, size, "RGB", size)
        d = (preprocess(torch.from_numpy(img)[None], spec)[0] - ref(Image.fromarray(img))).abs()
        assert d.max() < 0.6 and d.mean() < 0.05, (size, float(d.max()), float(d.mean()))
