"""ImageNet CNNs from timm: global average pooling of the last convolutional block.

The study took Keras models with ``include_top=False, pooling='avg'``; the timm
equivalent is ``forward_features`` (the last block's feature map) averaged over
space. For VGG19 that is 512-d, not timm's 4096-d pre-logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cbmir.models.registry import Backbone, Preprocess, register
from cbmir.models.weights import file_identity, hub_errors, resolve_weights_file


class GapFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x).mean(dim=(2, 3))


@register("timm_cnn")
def load_timm_cnn(cfg: Any) -> Backbone:
    import timm

    arch = cfg.arch
    overlay: dict[str, Any] = {}
    if cfg.get("weights"):
        path = resolve_weights_file(cfg.weights, ("model.safetensors", "pytorch_model.bin"))
        overlay = {"file": str(path)}
        identity = {"weights": file_identity(path)}
    elif cfg.get("pretrained", True):
        identity = {"weights": f"hf-hub:timm/{arch}"}
    else:
        identity = {"weights": "random"}
    pretrained = identity["weights"] != "random"
    try:
        with hub_errors(f"timm/{arch}", model=cfg.name):
            model = timm.create_model(
                arch, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay or None
            )
    except RuntimeError as exc:  # timm's strict load of a local file
        from cbmir.errors import WeightsError

        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"model.weights={cfg.weights} does not fit {arch}: {exc}") from exc
    pcfg = model.pretrained_cfg
    preprocess = Preprocess(
        input_size=None,  # runs at the source size: the size changes what the network sees
        min_size=int(cfg.get("min_size", 32)),
        resize="resize",
        interpolation=str(cfg.get("interpolation", "bilinear")),
        mean=tuple(pcfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(pcfg.get("std", (0.229, 0.224, 0.225))),
    )
    return Backbone(
        net=GapFeatures(model),
        preprocess=preprocess,
        dim=int(model.num_features),
        unit_norm=False,
        identity={"family": "timm_cnn", "arch": arch, **identity},
    )
