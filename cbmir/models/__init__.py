"""Backbone registry: ``build_backbone(cfg.model)``; one module per family."""

from cbmir.models.registry import Backbone, Preprocess, build_backbone, families, register

__all__ = ["Backbone", "Preprocess", "build_backbone", "families", "register"]
