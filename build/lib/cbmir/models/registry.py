"""The family table: ``model.family`` names the function that turns a ``model`` config into a Backbone.

A family is one module of this package with the family's name; the table below is the whole list, and
a family's module is imported only when a model of that family is built (the heavy libraries with it).
Family modules never import this module: the registry imports them, not the other way round.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cbmir.errors import ConfigError

if TYPE_CHECKING:
    from cbmir.models.base import Backbone

#: family -> "module:function" (modules relative to ``cbmir.models``; module name == family name).
FAMILIES: dict[str, str] = {
    "timm_cnn": "timm_cnn:load_timm_cnn",  # the study's ImageNet CNNs (global average pool)
    "timm_vit": "timm_vit:load_timm_vit",  # foundation ViTs that timm builds from YAML kwargs
    "conch": "conch:load_conch",  # CONCH v1
    "conch15": "conch15:load_conch15",  # CONCH v1.5
    "biomedclip": "biomedclip:load_biomedclip",
    "medclip": "medclip:load_medclip",
    "open_clip": "open_clip:load_open_clip",  # any open_clip image tower (conf/model/open_clip.yaml, openclip)
    "timm": "timm:load_timm",  # any timm model (conf/model/timm.yaml)
}

Loader = Callable[[Any], "Backbone"]


def families() -> list[str]:
    """The known ``model.family`` values (imports no family module)."""
    return sorted(FAMILIES)


def loader(family: str) -> Loader:
    """The build function of ``family``, importing its module now."""
    if family not in FAMILIES:
        raise ConfigError(f"model.family {family!r} is not registered; known: {', '.join(families())}")
    module, function = FAMILIES[family].split(":")
    return getattr(importlib.import_module(f"cbmir.models.{module}"), function)


def build_backbone(cfg_model: Any) -> Backbone:
    """Build the configured backbone in eval mode with gradients off."""
    backbone = loader(cfg_model.get("family"))(cfg_model)
    backbone.net.eval().requires_grad_(False)
    declared = cfg_model.get("dim")
    if declared is not None and int(declared) != backbone.dim:
        raise ConfigError(f"model {cfg_model.name}: config says dim={declared}, the network gives {backbone.dim}")
    return backbone
