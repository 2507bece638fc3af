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


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'cbmir.models' has no attribute {name!r}")
