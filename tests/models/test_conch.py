"""CONCH v1 against the official implementation, CONCH v1.5 against an independent rebuild.

CONCH v1: tests/golden/conch.npz was produced by scripts/make_golden.py from the official code (PyPI
``conch-fork``: ``CoCa`` from ``conch_ViT-B-16.json``, loaded by ``create_model_from_pretrained`` from a
checkpoint in the released layout, ``encode_image``). Here the same seeded weights, in the same key layout
(tests/golden/conch_keys.json), go through cbmir's key map with strict loading.

CONCH v1.5 has no installable reference (TRIDENT's ``conchv1_5.py`` is not on PyPI): it is compared with an
independent rebuild of that architecture written in this file from models.md §2.7 and TRIDENT's source
(einsum pooler with max-subtraction, run-time DINO position-embedding interpolation at 448).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbmir.errors import WeightsError
from cbmir.models import build_backbone
from tests.helpers.config import GOLDEN, model_cfg
from tests.helpers.golden_recipe import recipe


@pytest.fixture(scope="module")
def conch_file(tmp_path_factory):
    """The released layout: visual.* (official keys and shapes) plus text tower keys and logit_scale."""
    r = recipe()
    layout = json.loads((GOLDEN / "conch_keys.json").read_text())
    sd = r.seeded_state_dict(layout)
    sd["text.token_embedding.weight"] = r.seeded_tensor("text.token_embedding.weight", (8, 4))
    sd["logit_scale"] = torch.tensor(4.6)
    path = tmp_path_factory.mktemp("conch") / "pytorch_model.bin"
    torch.save(sd, path)
    return path


@pytest.mark.slow  # a full-size network on 2 CPU cores: half a minute or more
def test_conch_equals_official_encode_image(conch_file):
    golden = np.load(GOLDEN / "conch.npz")
    x = recipe().model_input((2, 3, 448, 448))[:1]  # one of the two golden rows keeps the test fast
    bb = build_backbone(model_cfg("conch", weights=str(conch_file)))
    assert bb.dim == 512 and bb.unit_norm and bb.identity["weights"].startswith("pytorch_model.bin:")
    net = bb.net
    with torch.no_grad():
        study = net(x)
        np.testing.assert_allclose(study.numpy(), golden["study"][:1], rtol=0, atol=1e-5)
        torch.testing.assert_close(study.norm(dim=-1), torch.ones(1))
        # encode_image(proj_contrast=True, normalize=False) from the same pooled features (one trunk pass less)
        pooled = net.ln_contrast(net.attn_pool_contrast(net.trunk.forward_features(x))[:, 0])
        torch.testing.assert_close(F.normalize(pooled, dim=-1), study, rtol=0, atol=0)
        projected = pooled @ net.proj_contrast
    np.testing.assert_allclose(projected.numpy(), golden["projected"][:1], rtol=0, atol=1e-5)
    assert not torch.allclose(F.normalize(projected, dim=-1), study, atol=1e-3)  # the projection changes the output
    with torch.device("meta"):
        flags = build_backbone(model_cfg("conch", pretrained=False, proj_contrast=True, normalize=False))
    assert (flags.net.use_proj, flags.net.normalize, flags.unit_norm) == (True, False, False)


def test_conch_keys_keep_the_image_tower_only():
    layout = json.loads((GOLDEN / "conch_keys.json").read_text())
    prefixes = {".".join(k.split(".")[:2]) for k in layout}
    assert prefixes == {
        "visual.trunk",
        "visual.attn_pool_contrast",
        "visual.attn_pool_caption",
        "visual.ln_contrast",
        "visual.ln_caption",
        "visual.proj_contrast",
    }
    from cbmir.models.conch import ConchVision, conch_key_map

    with torch.device("meta"):
        net = ConchVision()
    mapped = conch_key_map({k: torch.empty(0) for k in layout}, net)
    assert set(mapped) == set(net.state_dict())


def test_conch_missing_and_unexpected_keys_raise(tmp_path):
    r = recipe()
    layout = json.loads((GOLDEN / "conch_keys.json").read_text())
    small = {k: v for k, v in layout.items() if k.startswith(("visual.ln_contrast.", "visual.ln_caption."))}
    sd = r.seeded_state_dict(small)
    sd["visual.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "partial.bin")
    with pytest.raises(
        WeightsError, match=r"missing keys \[proj_contrast, trunk\.cls_token.*1 unexpected keys \[extra\.weight\]"
    ):
        build_backbone(model_cfg("conch", weights=str(tmp_path / "partial.bin")))


def test_conch_preprocessing_matches_the_official_transform_where_no_resampling_happens():
    """At 448 px the official Resize/CenterCrop are no-ops: only ToTensor + Normalize, same math (≤1e-5)."""
    from PIL import Image
    from torchvision import transforms as T

    from cbmir.cell.extract import preprocess

    r = recipe()
    with torch.device("meta"):
        spec = build_backbone(model_cfg("conch", pretrained=False)).preprocess
    ref = T.Compose(
        [
            T.Resize(448, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(448),
            T.ToTensor(),
            T.Normalize(r.OPENAI_MEAN, r.OPENAI_STD),
        ]
    )
    img = r.synthetic_image(448, 448, "RGB", 7)
    ours = preprocess(torch.from_numpy(img)[None], spec)[0]
    torch.testing.assert_close(ours, ref(Image.fromarray(img)), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- CONCH v1.5


class TridentPooler(nn.Module):
    """TRIDENT's AttentionalPooler, rebuilt from its source: einsum attention with max subtraction."""

    def __init__(self):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 768))
        self.heads, self.scale = 8, (768 // 8) ** -0.5
        self.ln_k, self.ln_q = nn.LayerNorm(1024), nn.LayerNorm(768)
        self.to_q = nn.Linear(768, 768, bias=False)
        self.to_kv = nn.Linear(1024, 1536, bias=False)
        self.to_out = nn.Linear(768, 768, bias=False)

    def forward(self, x):
        b, h = x.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], h, -1).permute(0, 2, 1, 3) for t in (q, k, v))
        sim = torch.einsum("bhid,bhjd->bhij", q * self.scale, k)
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, -1, 768)
        return self.to_out(out)


class TridentConch15(nn.Module):
    """ViT-L/16 trunk at 224 whose position embedding is interpolated at run time (DINO style)."""

    def __init__(self, depth: int = 24):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(
            img_size=224,
            patch_size=16,
            embed_dim=1024,
            depth=depth,
            num_heads=16,
            qkv_bias=True,
            init_values=1.0,
            num_classes=0,
            dynamic_img_size=True,
        )
        self.attn_pool_contrast = TridentPooler()
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x):
        t = self.trunk
        tokens = t.patch_embed(x).flatten(1, 2)  # dynamic_img_size: (B, H, W, C) patches
        tokens = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        n, side, w0 = t.pos_embed.shape[1] - 1, 14, x.shape[-1] // 16 + 0.1
        patch = F.interpolate(
            t.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(n), w0 / math.sqrt(n)),
            mode="bicubic",
        )
        pos = torch.cat([t.pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, 1024)], dim=1)
        tokens = t.norm(t.blocks(tokens + pos))
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def test_conch15_equals_an_independent_rebuild(tmp_path, monkeypatch):
    """The real loader (key map, pos-embed interpolation, strict load) on a 2-block ViT-L trunk at 448."""
    from cbmir.models import conch15

    monkeypatch.setattr(conch15, "CONCH15_DEPTH", 2)
    r = recipe()
    torch.manual_seed(0)
    ref = TridentConch15(depth=2).eval()
    layout = r.layout_of(ref.state_dict())  # trunk.* (pos_embed at 197 tokens), attn_pool_contrast.*, ln_contrast.*
    assert layout["trunk.pos_embed"]["shape"] == [1, 197, 1024]
    sd = r.seeded_state_dict(layout)
    ref.load_state_dict(sd, strict=True)
    torch.save(sd, tmp_path / "pytorch_model_vision.bin")
    bb = build_backbone(model_cfg("conch15", weights=str(tmp_path)))
    assert bb.dim == 768 and not bb.unit_norm
    x = r.model_input((1, 3, 448, 448))
    with torch.no_grad():
        torch.testing.assert_close(bb.net(x), ref(x), rtol=0, atol=1e-5)
