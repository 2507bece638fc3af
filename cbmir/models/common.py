"""Small pieces the families share: plain containers, preprocessing specs from YAML, crops, result-folder names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cbmir.errors import ConfigError
from cbmir.models import plain  # noqa: F401  (re-exported: the families import it from here)
from cbmir.models.base import Preprocess


class CenterCrop(nn.Module):
    """Centre crop inside the network: with ``Preprocess(input_size=S)`` it gives torchvision's
    ``Resize(S) + CenterCrop(C)`` (e.g. GigaPath's 256 → 224, timm's ``crop_pct``). Normalisation is
    per pixel, so cropping after it is the same as cropping before it."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == (self.size, self.size):
            return x
        top = int(round((h - self.size) / 2.0))
        left = int(round((w - self.size) / 2.0))
        return x[..., top : top + self.size, left : left + self.size]

    def extra_repr(self) -> str:
        return f"size={self.size}"


def preprocess_from_cfg(block: Mapping[str, Any] | None) -> tuple[Preprocess, int | None]:
    """``model.preprocess`` of a YAML → the extractor's spec, plus an optional centre crop done in the net.

    Keys: ``size`` (input size), ``resize`` (resize | resize_crop | pad), ``interpolation``, ``mean``,
    ``std``, ``grayscale`` and ``crop`` (crop to this size after resizing to ``size``).
    """
    if not block:
        raise ConfigError("model.preprocess is missing")
    block = plain(block)
    known = {"size", "resize", "interpolation", "mean", "std", "grayscale", "crop"}
    unknown = set(block) - known
    if unknown:
        raise ConfigError(f"model.preprocess has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    spec = Preprocess(
        input_size=int(block["size"]),
        resize=str(block.get("resize", "resize_crop")),
        interpolation=str(block.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in block["mean"]),
        std=tuple(float(v) for v in block["std"]),
        grayscale=bool(block.get("grayscale", False)),
    )
    crop = block.get("crop")
    if crop is not None and int(crop) > spec.input_size:
        raise ConfigError(f"model.preprocess.crop={crop} exceeds size={spec.input_size}")
    return spec, (int(crop) if crop is not None and int(crop) != spec.input_size else None)


def with_crop(net: nn.Module, crop: int | None) -> nn.Module:
    return nn.Sequential(CenterCrop(crop), net) if crop else net


SAFE_NAME = re.compile(r"^[A-Za-z0-9._+=-]+$")


def check_folder_name(cfg: Any) -> None:
    """``model.name`` is the result folder: the generic entries (any timm / open_clip model) must keep it safe."""
    if not SAFE_NAME.match(str(cfg.name)):
        raise ConfigError(
            f"model.name={cfg.name!r} names the result folder and must use only letters, digits and ._+=-; "
            "the model itself is chosen with model.arch (and model.tag)"
        )
