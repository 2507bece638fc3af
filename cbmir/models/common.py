"""Small pieces the foundation-model families share: preprocessing specs from YAML, crops, L2 norm, hub blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cbmir.errors import ConfigError
from cbmir.models.registry import Preprocess


def plain(value: Any) -> Any:
    """An OmegaConf node (or anything) as plain Python containers, for identities and kwargs."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


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


def hub_block(cfg: Any) -> dict[str, Any]:
    """``model.hub``: ``repo``, ``files`` (candidates, first found wins), ``revision`` (pinned commit), ``gated``."""
    hub = plain(cfg.get("hub")) or {}
    files = hub.get("files") or []
    if isinstance(files, str):
        files = [files]
    return {
        "repo": hub.get("repo"),
        "files": tuple(files),
        "revision": hub.get("revision"),
        "gated": bool(hub.get("gated", False)),
    }


def wants_weights(cfg: Any) -> bool:
    """A local file always loads; otherwise ``model.pretrained`` (default true) decides."""
    return bool(cfg.get("weights")) or bool(cfg.get("pretrained", True))
