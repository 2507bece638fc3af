"""What every backbone family returns: the network plus the preprocessing that feeds it.

Family modules import this module (and ``common``/``weights``), never the registry, so that the
registry can import the families without a cycle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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
