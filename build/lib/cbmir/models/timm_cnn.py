"""ImageNet CNNs from timm: global average pooling of the last convolutional block.

The study took Keras models with ``include_top=False, pooling='avg'``; the timm
equivalent is ``forward_features`` (the last block's feature map) averaged over
space. For VGG19 that is 512-d, not timm's 4096-d pre-logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cbmir.models.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocess
from cbmir.models.weights import create_timm_model, file_identity


class GapFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x).mean(dim=(2, 3))


def load_timm_cnn(cfg: Any) -> Backbone:
    arch = str(cfg.arch)
    model, path = create_timm_model(cfg, arch, files=("model.safetensors", "pytorch_model.bin"))
    if path is not None:
        weights = file_identity(path)
    elif cfg.get("pretrained", True):
        weights = f"hf-hub:timm/{arch}"
    else:
        weights = "random"
    pcfg = model.pretrained_cfg
    preprocess = Preprocess(
        input_size=None,  # runs at the source size: the size changes what the network sees
        min_size=int(cfg.get("min_size", 32)),
        resize="resize",
        interpolation=str(cfg.get("interpolation", "bilinear")),
        mean=tuple(pcfg.get("mean", IMAGENET_MEAN)),
        std=tuple(pcfg.get("std", IMAGENET_STD)),
    )
    return Backbone(
        net=GapFeatures(model),
        preprocess=preprocess,
        dim=int(model.num_features),
        unit_norm=False,
        identity={"family": "timm_cnn", "arch": arch, "weights": weights},
    )
