"""Backbones: ``build_backbone(cfg.model)``; the family table is in :mod:`cbmir.models.registry`.

Light on import (no torch): the names below load their modules on first use, so that a config can be validated
(``families()``) before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "Backbone": "cbmir.models.base",
    "Preprocess": "cbmir.models.base",
    "build_backbone": "cbmir.models.registry",
    "families": "cbmir.models.registry",
}
__all__ = list(_NAMES)


def plain(value: Any) -> Any:
    """An OmegaConf node (or anything) as plain Python containers, for identities and kwargs (torch-free)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'cbmir.models' has no attribute {name!r}")
