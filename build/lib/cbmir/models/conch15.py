"""CONCH v1.5 image tower, re-implemented on timm (no dependency on the ``conch`` package).

CONCH v1.5 (``MahmoodLab/conchv1_5``, family ``conch15``), as TRIDENT's ``CONCHVisionTower``: ViT-L/16 trunk
(LayerScale) built at 224 and run at 448, its position embedding interpolated as the trunk does at run time
(DINO's bicubic ``scale_factor`` with the 0.1 offset, computed once at load); a pooler with bias-free
``to_q``/``to_kv``/``to_out`` (8 heads, query width 768, context 1024) → ``ln_contrast``: 768-d, not normalised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.models.base import Backbone
from cbmir.models.common import preprocess_from_cfg
from cbmir.models.weights import load_weights

CONCH15_DEPTH = 24  # ViT-L; a module constant so that tests can build a shallow tower through the real loader


class Conch15Pooler(nn.Module):
    """TRIDENT's CONCH v1.5 ``AttentionalPooler``: bias-free ``to_q``, ``to_kv``, ``to_out``; ``ln_q``, ``ln_k``."""

    def __init__(self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)  # (b, m, d)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], h, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return self.to_out(out.transpose(1, 2).reshape(b, q.shape[1], -1))


def dino_interpolate_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """The trunk's run-time ``interpolate_pos_encoding`` (bicubic, ``scale_factor`` with DINO's 0.1 offset)."""
    n = pos.shape[1] - 1
    side = int(math.sqrt(n))
    if side == grid:
        return pos
    cls, patch = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    g = grid + 0.1
    patch = F.interpolate(
        patch.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(g / side, g / side),
        mode="bicubic",
    )
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls, patch], dim=1)


class Conch15Vision(nn.Module):
    def __init__(self, img_size: int = 448):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(
            img_size=img_size,
            patch_size=16,
            embed_dim=1024,
            depth=CONCH15_DEPTH,
            num_heads=16,
            mlp_ratio=4.0,
            qkv_bias=True,
            init_values=1.0,
            num_classes=0,
        )
        self.attn_pool_contrast = Conch15Pooler(768, 1024, 8, 1)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x))[:, 0])


def conch15_key_map(sd: Mapping[str, torch.Tensor], model: Conch15Vision) -> dict[str, torch.Tensor]:
    """``pytorch_model_vision.bin`` (keys ``trunk.*``, ``attn_pool_contrast.*``, ``ln_contrast.*``) → this module.

    Upstream builds the trunk at 224 (pos_embed 197 tokens; a file of another size is first resized to
    197, bilinear, as TRIDENT's ``resize_pos_embed``) and interpolates at run time for 448 inputs.
    """
    from timm.layers import resample_abs_pos_embed

    out = dict(sd)
    pos = out.get("trunk.pos_embed")
    if pos is not None and pos.ndim == 3:
        if pos.shape[1] != 197:
            pos = resample_abs_pos_embed(
                pos, new_size=(14, 14), num_prefix_tokens=1, interpolation="bilinear", antialias=False, verbose=False
            )
        out["trunk.pos_embed"] = dino_interpolate_pos_embed(pos, model.trunk.patch_embed.grid_size[0])
    return out


def load_conch15(cfg: Any) -> Backbone:
    spec, _ = preprocess_from_cfg(cfg.get("preprocess"))
    net, weights = load_weights(cfg, lambda: Conch15Vision(img_size=spec.input_size), conch15_key_map)
    identity = {"family": "conch15", "weights": weights}
    return Backbone(net=net, preprocess=spec, dim=768, unit_norm=False, identity=identity)
