"""Backbones: ``build_backbone(cfg.model)``; the family table is in :mod:`cbmir.models.registry`."""

from cbmir.models.base import Backbone, Preprocess
from cbmir.models.registry import build_backbone, families

__all__ = ["Backbone", "Preprocess", "build_backbone", "families"]
