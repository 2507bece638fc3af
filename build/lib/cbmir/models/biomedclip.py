"""BiomedCLIP image tower (family ``biomedclip``): timm ViT-B/16 + ``Linear(768, 512, bias=False)`` + L2.

open_clip builds the tower as a ``TimmModel``: ``timm.create_model('vit_base_patch16_224')`` with the
classifier reset (``global_pool='token'``: the CLS token after the final norm), then
``head = Sequential(drop, proj)``. ``model(img, txt)[0]`` is the L2-normalised 512-d projection. No text
tower and no BiomedBERT download: the checkpoint's ``visual.*`` keys (``visual.trunk.*``,
``visual.head.proj.weight``) load strictly; ``text.*`` and ``logit_scale`` are dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.models.base import Backbone
from cbmir.models.common import preprocess_from_cfg
from cbmir.models.weights import load_weights


class BiomedClipVision(nn.Module):
    def __init__(self, *, normalize: bool = True):
        super().__init__()
        import timm

        self.trunk = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(0.0), proj=nn.Linear(768, 512, bias=False)))
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.trunk(x))
        return F.normalize(out, dim=-1) if self.normalize else out


def biomedclip_key_map(sd: Mapping[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    return {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}


def load_biomedclip(cfg: Any) -> Backbone:
    normalize = bool(cfg.get("normalize", True))
    spec, _ = preprocess_from_cfg(cfg.get("preprocess"))
    net, weights = load_weights(cfg, lambda: BiomedClipVision(normalize=normalize), biomedclip_key_map)
    identity = {"family": "biomedclip", "normalize": normalize, "weights": weights}
    return Backbone(net=net, preprocess=spec, dim=512, unit_norm=normalize, identity=identity)
