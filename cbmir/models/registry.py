"""Backbones as specs: a family name maps to one small loader function.

A loader turns a ``model`` config into a :class:`Backbone`: a network that maps a
normalised float batch to embeddings, plus the preprocessing that the extractor
applies before it. Nothing model-specific lives outside the family's own module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cbmir.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESIZE_MODES = ("resize", "resize_crop", "pad")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocess:
    """How a uint8 batch becomes the backbone's input (applied batched, on the device).

    ``input_size=None`` runs the network at the source resolution (the study's CNNs),
    never below ``min_size``; otherwise every image is brought to ``input_size``:
    ``resize`` (square resize), ``resize_crop`` (shortest edge, then centre crop, as
    torchvision's Resize+CenterCrop) or ``pad`` (paste centred on a black canvas of
    max(input_size, h, w), then resize: MedCLIP's processor).
    """

    input_size: int | None = None
    min_size: int = 1
    resize: str = "resize"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"preprocess.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"preprocess.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        channels = 1 if self.grayscale else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ConfigError(f"preprocess mean/std need {channels} values, got {self.mean} / {self.std}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Backbone:
    """A frozen feature extractor and everything needed to feed it and name its output."""

    net: nn.Module
    preprocess: Preprocess
    dim: int
    unit_norm: bool
    #: What makes the weights unique (architecture, source, revision or file identity, seed).
    identity: dict[str, Any] = field(default_factory=dict)


Loader = Callable[[Any], Backbone]
_FAMILIES: dict[str, Loader] = {}


def register(family: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        if family in _FAMILIES:
            raise KeyError(f"backbone family {family!r} registered twice")
        _FAMILIES[family] = fn
        return fn

    return wrap


def families() -> list[str]:
    _import_families()
    return sorted(_FAMILIES)


def _import_families() -> None:
    # The family modules register themselves on import; they import heavy libraries lazily.
    from cbmir.models import (  # noqa: F401
        biomedclip,
        conch,
        medclip,
        openclip,
        timm_any,
        timm_cnn,  # noqa: F401
        vit,
    )


def build_backbone(cfg_model: Any) -> Backbone:
    """Build the configured backbone in eval mode with gradients off."""
    _import_families()
    family = cfg_model.get("family")
    if family not in _FAMILIES:
        raise ConfigError(f"model.family {family!r} is not registered; known: {', '.join(sorted(_FAMILIES))}")
    backbone = _FAMILIES[family](cfg_model)
    backbone.net.eval().requires_grad_(False)
    declared = cfg_model.get("dim")
    if declared is not None and int(declared) != backbone.dim:
        raise ConfigError(f"model {cfg_model.name}: config says dim={declared}, the network gives {backbone.dim}")
    return backbone


@torch.no_grad()
def probe_dim(net: nn.Module, size: int, channels: int = 3) -> int:
    """Embedding width, measured with one tiny forward pass (meta tensors where possible)."""
    was_training = net.training
    net.eval()
    out = net(torch.zeros(1, channels, size, size))
    net.train(was_training)
    return int(out.shape[-1])
