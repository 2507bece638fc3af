"""MedCLIP-ViT image tower (family ``medclip``): Swin-Tiny + ``Linear(768, 512, bias=False)`` + L2.

Upstream (``MedCLIPVisionModelViT``) wraps a transformers ``SwinModel`` (``SwinConfig()`` defaults =
``microsoft/swin-tiny-patch4-window7-224``): ``pooler_output`` (mean over the 49 tokens after the final
LayerNorm) → ``projection_head`` → ``MedCLIPModel`` divides by the norm: ``img_embeds``, 512-d, unit norm.
Here the same network is timm's ``swin_tiny_patch4_window7_224`` (``num_classes=0``: final norm, average
pool). The weights exist only in upstream's zip (``medclip-vit-pretrained.zip`` → ``pytorch_model.bin``),
not on the hub: ``model.weights`` must point at that file or the folder it was unzipped into.

Key map (transformers 4.x names, as the file is stored): take ``vision_model.model.*``; drop the
``relative_position_index`` buffers; ``embeddings.patch_embeddings.projection`` → ``patch_embed.proj``;
``embeddings.norm`` → ``patch_embed.norm``; ``encoder.layers`` → ``layers``; ``layernorm_before/after`` →
``norm1/norm2``; ``attention.self.{query,key,value}`` → concatenated ``attn.qkv``;
``attention.self.relative_position_bias_table`` → ``attn.relative_position_bias_table``;
``attention.output.dense`` → ``attn.proj``; ``intermediate.dense`` → ``mlp.fc1``; ``output.dense`` →
``mlp.fc2``; ``layers.{i}.downsample`` → ``layers.{i+1}.downsample`` (timm merges patches at the start of
the next stage); ``layernorm`` → ``norm``; ``vision_model.projection_head.weight`` → ``projection_head.weight``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.errors import WeightsError
from cbmir.models.base import Backbone
from cbmir.models.common import preprocess_from_cfg
from cbmir.models.weights import load_weights, resolve_weights_file, wants_weights

WEIGHTS_HELP = (
    "MedCLIP's weights are not on the Hugging Face hub. Download upstream's zip "
    "(RyanWangZf/MedCLIP, medclip/medclip_vit_weight.txt names it: "
    "https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip), unzip it and pass "
    "model.weights=/path/to/pytorch_model.bin (or the unzipped folder)."
)


class MedClipVision(nn.Module):
    def __init__(self, *, normalize: bool = True):
        super().__init__()
        import timm

        self.model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0)
        self.projection_head = nn.Linear(768, 512, bias=False)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.projection_head(self.model(x))
        return F.normalize(out, dim=-1) if self.normalize else out


def medclip_key_map(sd: Mapping[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, int, str], dict[str, torch.Tensor]] = {}
    prefix = "vision_model.model."
    for key, value in sd.items():
        if key == "vision_model.projection_head.weight":
            out["projection_head.weight"] = value
            continue
        if not key.startswith(prefix) or key.endswith("relative_position_index"):
            continue
        k = key[len(prefix) :]
        m = re.match(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$", k)
        if m:
            qkv.setdefault((int(m.group(1)), int(m.group(2)), m.group(4)), {})[m.group(3)] = value
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.downsample\.(.+)$", k)
        if m:
            out[f"model.layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"] = value
            continue
        for old, new in (
            ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
            ("embeddings.norm.", "patch_embed.norm."),
            ("encoder.layers.", "layers."),
            ("layernorm_before.", "norm1."),
            ("layernorm_after.", "norm2."),
            ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
            ("attention.output.dense.", "attn.proj."),
            ("intermediate.dense.", "mlp.fc1."),
            ("output.dense.", "mlp.fc2."),
        ):
            k = k.replace(old, new)
        if k.startswith("layernorm."):
            k = "norm." + k[len("layernorm.") :]
        out["model." + k] = value
    for (i, j, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(f"MedCLIP layer {i} block {j}: attention {kind} has only {sorted(parts)}")
        out[f"model.layers.{i}.blocks.{j}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], 0
        )
    return out


def find_medclip_file(weights: str) -> Path:
    """``model.weights`` is the ``pytorch_model.bin``, or a folder that holds it (also one level down,
    as in upstream's ``medclip-vit-pretrained/`` layout)."""
    p = Path(weights).expanduser()
    if p.is_dir():
        hits = sorted(p.glob("pytorch_model.bin")) or sorted(p.glob("*/pytorch_model.bin"))
        if hits:
            return hits[0]
    return resolve_weights_file(p, ("pytorch_model.bin",))


def load_medclip(cfg: Any) -> Backbone:
    normalize = bool(cfg.get("normalize", True))
    spec, _ = preprocess_from_cfg(cfg.get("preprocess"))
    if wants_weights(cfg) and not cfg.get("weights"):
        raise WeightsError(f"model {cfg.name}: model.weights is not set. {WEIGHTS_HELP}")
    local = find_medclip_file(str(cfg.weights)) if cfg.get("weights") else None
    net, weights = load_weights(cfg, lambda: MedClipVision(normalize=normalize), medclip_key_map, local=local)
    identity = {"family": "medclip", "normalize": normalize, "weights": weights}
    return Backbone(net=net, preprocess=spec, dim=512, unit_norm=normalize, identity=identity)
