"""CONCH v1 image tower, re-implemented on timm (no dependency on the ``conch`` package).

CONCH v1 (``MahmoodLab/CONCH``, family ``conch``): timm ``VisionTransformer`` ViT-B/16 at 448 (all 785
tokens after the final norm) → the contrastive attentional pooler (1 query of width 512 attending over
all tokens, sequence-first ``nn.MultiheadAttention(512, 8, kdim=768, vdim=768)`` with ``ln_q``/``ln_k``)
→ ``ln_contrast`` → L2. That is ``CoCa.encode_image(x, proj_contrast=False, normalize=True)``: 512-d,
unit norm (the study's embedding). ``model.proj_contrast=true`` gives the image-text space instead.

The released ``pytorch_model.bin`` is the whole CoCa minus the text decoder. The key map keeps
``visual.*`` without the captioning pooler (``visual.attn_pool_caption.*``, ``visual.ln_caption.*``), strips
``visual.`` and loads strictly (upstream itself loads with ``strict=False``).

CONCH v1.5 is its own family, in :mod:`cbmir.models.conch15`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.models.base import Backbone
from cbmir.models.common import preprocess_from_cfg
from cbmir.models.weights import load_weights

CONCH_DROP = ("visual.attn_pool_caption.", "visual.ln_caption.")


class ContrastPooler(nn.Module):
    """CONCH v1's ``AttentionalPooler`` (contrastive head): ``attn(ln_q(query), ln_k(x), ln_k(x))``.

    Parameter names follow the checkpoint: ``query``, ``attn.{q,k,v}_proj_weight``, ``attn.in_proj_bias``,
    ``attn.out_proj``, ``ln_q``, ``ln_k``.
    """

    def __init__(self, d_model: int = 512, context_dim: int = 768, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.ln_k(x).permute(1, 0, 2)  # NLD -> LND
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, x.shape[0], -1)
        out = self.attn(q, kv, kv, need_weights=False)[0]
        return out.permute(1, 0, 2)  # LND -> NLD


class ConchVision(nn.Module):
    """CONCH v1 image tower; ``forward`` = ``encode_image(x, proj_contrast, normalize)``."""

    def __init__(self, *, proj_contrast: bool = False, normalize: bool = True):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(
            img_size=448,
            patch_size=16,
            embed_dim=768,
            depth=12,
            num_heads=12,
            mlp_ratio=4.0,
            num_classes=0,
            dynamic_img_size=True,
        )
        self.attn_pool_contrast = ContrastPooler(512, 768, 8, 1)
        self.ln_contrast = nn.LayerNorm(512)
        self.proj_contrast = nn.Parameter(768**-0.5 * torch.randn(512, 512))
        self.use_proj = proj_contrast
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        if self.use_proj:
            pooled = pooled @ self.proj_contrast
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def conch_key_map(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Released CoCa checkpoint → :class:`ConchVision` keys (see module docstring)."""
    from timm.layers import resample_abs_pos_embed

    out = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.") and not k.startswith(CONCH_DROP)}
    pos = out.get("trunk.pos_embed")
    target = model.trunk.pos_embed
    if pos is not None and pos.ndim == 3 and pos.shape != target.shape:
        # upstream's resize_pos_embed: bilinear, no antialias, one prefix token
        out["trunk.pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=model.trunk.patch_embed.grid_size,
            num_prefix_tokens=1,
            interpolation="bilinear",
            antialias=False,
            verbose=False,
        )
    return out


def load_conch(cfg: Any) -> Backbone:
    proj = bool(cfg.get("proj_contrast", False))
    normalize = bool(cfg.get("normalize", True))
    spec, _ = preprocess_from_cfg(cfg.get("preprocess"))
    net, weights = load_weights(cfg, lambda: ConchVision(proj_contrast=proj, normalize=normalize), conch_key_map)
    identity = {"family": "conch", "proj_contrast": proj, "normalize": normalize, "weights": weights}
    return Backbone(net=net, preprocess=spec, dim=512, unit_norm=normalize, identity=identity)
