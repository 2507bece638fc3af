"""Foundation ViTs that timm builds from explicit keyword arguments (family ``timm_vit``).

One loader serves UNI, UNI2-h, Virchow2, H-optimus-0, Prov-GigaPath, DINOv2 and, through key maps
from the transformers layout, Phikon-v2, RAD-DINO (``Dinov2Model``) and MedSigLIP
(``SiglipVisionModel``). The YAML holds everything model-specific:

- ``arch`` + ``kwargs``: the exact ``timm.create_model`` call (``num_classes=0`` is always added).
  ``mlp_layer``/``act_layer`` may name ``SwiGLUPacked``/``SwiGLU``/``Mlp``/``GluMlp`` and any timm activation.
- ``hub``: ``repo``, ``files``, ``revision``, ``gated``; ``model.weights`` overrides it with a local copy.
- ``key_map``: ``timm`` (the checkpoint is in timm's layout; timm's own ``checkpoint_filter_fn`` runs,
  exactly as ``timm.create_model(..., pretrained=True)`` would), ``hf_dinov2`` or ``hf_siglip``.
- ``pool``: ``model`` (timm's pooled features: CLS, or SigLIP's attention pool) or ``cls_mean``
  (``cat(CLS, mean of the patch tokens)``, Virchow's embedding).
- ``preprocess``: see :func:`cbmir.models.common.preprocess_from_cfg`. With ``hf_processor: true`` (the
  transformers models) the repository's ``preprocessor_config.json`` (from the hub at the pinned revision, or
  beside a local checkpoint) replaces it when it can be read; the YAML block is the fallback.

Loading is strict: a missing or unexpected key, or a shape that does not fit, is a ``WeightsError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cbmir.errors import ConfigError, WeightsError
from cbmir.models.base import Backbone, Preprocess
from cbmir.models.common import plain, preprocess_from_cfg, with_crop
from cbmir.models.weights import hub_block, hub_download, load_weights

POOLS = ("model", "cls_mean")
KEY_MAPS = ("timm", "hf_dinov2", "hf_siglip")


def timm_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """YAML kwargs → ``timm.create_model`` kwargs (layer classes named by string)."""
    import timm.layers as tl

    out = dict(plain(kwargs) or {})
    layers = {"SwiGLUPacked": tl.SwiGLUPacked, "SwiGLU": tl.SwiGLU, "Mlp": tl.Mlp, "GluMlp": tl.GluMlp}
    if isinstance(out.get("mlp_layer"), str):
        if out["mlp_layer"] not in layers:
            raise ConfigError(f"model.kwargs.mlp_layer={out['mlp_layer']!r}; known: {sorted(layers)}")
        out["mlp_layer"] = layers[out["mlp_layer"]]
    if isinstance(out.get("act_layer"), str):
        act = tl.get_act_layer(out["act_layer"])
        if act is None:
            raise ConfigError(f"model.kwargs.act_layer={out['act_layer']!r} is not a timm activation")
        out["act_layer"] = act
    return out


class ClsMeanPool(nn.Module):
    """``cat(x[:, 0], x[:, n_prefix:].mean(1))`` over all tokens (Virchow/Virchow2: 2 × width)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.n_prefix = int(getattr(model, "num_prefix_tokens", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)
        return torch.cat([tokens[:, 0], tokens[:, self.n_prefix :].mean(1)], dim=-1)


def _strip(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def hf_dinov2_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``Dinov2Model`` (4.x names as the hub files store them; 5.x too) → timm ``VisionTransformer``.

    ``mask_token`` (training only) is dropped; q/k/v are concatenated into ``qkv``; LayerScale
    ``lambda1`` becomes ``gamma``. A SwiGLU MLP (``weights_in``/``weights_out``) maps to ``SwiGLUPacked``.
    """
    sd = _strip(sd, ("dinov2.", "model."))
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key == "embeddings.mask_token":
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)$", key)
        if m is None:
            simple = {
                "embeddings.cls_token": "cls_token",
                "embeddings.position_embeddings": "pos_embed",
                "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                "layernorm.weight": "norm.weight",
                "layernorm.bias": "norm.bias",
            }
            out[simple.get(key, key)] = value  # unknown keys stay and fail the strict load
            continue
        i, rest = int(m.group(1)), m.group(2)
        a = re.match(r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$", rest)
        if a:  # transformers 4.x names (the hub files), or 5.x q_proj/k_proj/v_proj
            part = a.group(1) or {"q": "query", "k": "key", "v": "value"}[a.group(2)]
            qkv.setdefault((i, a.group(3)), {})[part] = value
            continue
        rename = {
            "norm1.weight": "norm1.weight",
            "norm1.bias": "norm1.bias",
            "norm2.weight": "norm2.weight",
            "norm2.bias": "norm2.bias",
            "attention.output.dense.weight": "attn.proj.weight",
            "attention.output.dense.bias": "attn.proj.bias",
            "attention.o_proj.weight": "attn.proj.weight",
            "attention.o_proj.bias": "attn.proj.bias",
            "layer_scale1.lambda1": "ls1.gamma",
            "layer_scale2.lambda1": "ls2.gamma",
            "mlp.fc1.weight": "mlp.fc1.weight",
            "mlp.fc1.bias": "mlp.fc1.bias",
            "mlp.fc2.weight": "mlp.fc2.weight",
            "mlp.fc2.bias": "mlp.fc2.bias",
            "mlp.weights_in.weight": "mlp.fc1.weight",
            "mlp.weights_in.bias": "mlp.fc1.bias",
            "mlp.weights_out.weight": "mlp.fc2.weight",
            "mlp.weights_out.bias": "mlp.fc2.bias",
        }
        out[f"blocks.{i}.{rename.get(rest, rest)}"] = value
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(f"layer {i}: attention {kind} has only {sorted(parts)} of query/key/value")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def hf_siglip_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``SiglipVisionModel``/``SiglipModel`` → timm SigLIP ``VisionTransformer`` (MAP head).

    Keeps ``vision_model.*`` (the text tower, ``logit_scale`` and ``logit_bias`` of a full SigLIP file are
    dropped); q/k/v concatenate into ``qkv``; the head's packed ``in_proj`` splits into ``q`` and ``kv``.
    """
    if any(k.startswith("vision_model.") for k in sd):
        sd = {k[len("vision_model.") :]: v for k, v in sd.items() if k.startswith("vision_model.")}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key == "embeddings.position_ids":
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.+)$", key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            a = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)$", rest)
            if a:
                qkv.setdefault((i, a.group(2)), {})[a.group(1)] = value
                continue
            rest = (
                rest.replace("layer_norm1.", "norm1.")
                .replace("layer_norm2.", "norm2.")
                .replace("self_attn.out_proj.", "attn.proj.")
            )
            out[f"blocks.{i}.{rest}"] = value
            continue
        if key == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif key.startswith("embeddings.patch_embedding."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("post_layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif key == "head.probe":
            out["attn_pool.latent"] = value
        elif key.startswith("head.attention.in_proj_"):
            kind = key.rsplit("_", 1)[1]  # weight | bias
            width = value.shape[0] // 3
            out[f"attn_pool.q.{kind}"] = value[:width]
            out[f"attn_pool.kv.{kind}"] = value[width:]
        elif key.startswith("head.attention.out_proj."):
            out["attn_pool.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("head.layernorm."):
            out["attn_pool.norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("head.mlp."):
            out["attn_pool.mlp." + key[len("head.mlp.") :]] = value
        else:
            out[key] = value
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"layer {i}: attention {kind} has only {sorted(parts)} of q/k/v")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def preprocess_from_hf(proc: Mapping[str, Any]) -> tuple[Preprocess, int | None]:
    """A transformers image-processor config (``BitImageProcessor``, ``SiglipImageProcessor``, ...) → spec.

    ``size.shortest_edge`` → shortest-edge resize (+ centre crop); ``size.height/width`` → square resize.
    """

    def side(v: Any, what: str) -> tuple[int, bool]:
        if isinstance(v, int):
            return v, True
        if isinstance(v, Mapping) and "shortest_edge" in v:
            return int(v["shortest_edge"]), True
        if isinstance(v, Mapping) and "height" in v and v["height"] == v.get("width"):
            return int(v["height"]), False
        raise ConfigError(f"preprocessor_config.json: unsupported {what} {v!r}")

    if not proc.get("do_resize", True):
        raise ConfigError("preprocessor_config.json: do_resize=false is not supported")
    size, shortest = side(proc["size"], "size")
    resample = RESAMPLE.get(int(proc.get("resample", 3)))
    if resample is None:
        raise ConfigError(f"preprocessor_config.json: resample={proc.get('resample')} is not supported")
    if abs(float(proc.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9 or not proc.get("do_rescale", True):
        raise ConfigError("preprocessor_config.json: only rescale by 1/255 is supported")
    mean, std = proc.get("image_mean"), proc.get("image_std")
    if not proc.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean] * 3))
    std = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std] * 3))
    crop = None
    if proc.get("do_center_crop", False) and proc.get("crop_size") is not None:
        crop, _ = side(proc["crop_size"], "crop_size")
    spec = Preprocess(
        input_size=size, resize="resize_crop" if shortest else "resize", interpolation=resample, mean=mean, std=std
    )
    return spec, (crop if crop is not None and crop != size else None)


def read_hf_processor(cfg: Any, hub: Mapping[str, Any]) -> dict[str, Any] | None:
    """``preprocessor_config.json`` beside ``model.weights`` (a folder or a file in one), else from the hub."""
    import json
    from pathlib import Path

    if cfg.get("weights"):
        p = Path(str(cfg.weights)).expanduser()
        found = (p if p.is_dir() else p.parent) / "preprocessor_config.json"
        return json.loads(found.read_text()) if found.is_file() else None
    if not hub.get("repo"):
        return None
    path = hub_download(
        hub["repo"],
        "preprocessor_config.json",
        model=cfg.name,
        revision=hub.get("revision"),
        gated=hub.get("gated", False),
        optional=True,
    )
    return json.loads(path.read_text()) if path is not None else None


def convert_state_dict(key_map: str, sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint layout → the timm model's keys; then timm's filter (pos-embed resampling if the grid differs)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    if key_map == "hf_dinov2":
        sd = hf_dinov2_to_timm(sd)
    elif key_map == "hf_siglip":
        sd = hf_siglip_to_timm(sd)
    elif key_map != "timm":
        raise ConfigError(f"model.key_map must be one of {KEY_MAPS}, got {key_map!r}")
    try:
        return checkpoint_filter_fn(dict(sd), model)
    except Exception as exc:  # a malformed tensor (e.g. pos_embed of a wrong width)
        raise WeightsError(f"the checkpoint does not fit {type(model).__name__}: {exc}") from exc


def load_timm_vit(cfg: Any) -> Backbone:
    import timm

    pool = str(cfg.get("pool", "model"))
    key_map = str(cfg.get("key_map", "timm"))
    if pool not in POOLS:
        raise ConfigError(f"model.pool must be one of {POOLS}, got {pool!r}")
    if key_map not in KEY_MAPS:
        raise ConfigError(f"model.key_map must be one of {KEY_MAPS}, got {key_map!r}")
    spec, crop = preprocess_from_cfg(cfg.get("preprocess"))
    identity: dict[str, Any] = {
        "family": "timm_vit",
        "arch": str(cfg.arch),
        "kwargs": plain(cfg.get("kwargs")),
        "pool": pool,
        "key_map": key_map,
    }
    model, identity["weights"] = load_weights(
        cfg,
        lambda: timm.create_model(str(cfg.arch), pretrained=False, num_classes=0, **timm_kwargs(cfg.get("kwargs"))),
        lambda sd, net: convert_state_dict(key_map, sd, net),
    )
    if identity["weights"] != "random" and cfg.get("hf_processor", False):
        proc = read_hf_processor(cfg, hub_block(cfg))
        if proc is not None:
            spec, crop = preprocess_from_hf(proc)
            identity["preprocess_from"] = "preprocessor_config.json"
    net = ClsMeanPool(model) if pool == "cls_mean" else model
    dim = 2 * int(model.embed_dim) if pool == "cls_mean" else int(model.num_features)
    return Backbone(net=with_crop(net, crop), preprocess=spec, dim=dim, unit_norm=False, identity=identity)
