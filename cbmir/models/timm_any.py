"""Any timm model as a frozen encoder (family ``timm``): ``model.arch`` is a timm name (with its
pretrained tag) or ``hf-hub:org/repo``. The embedding is timm's pooled feature vector (the forward of
``num_classes=0``), the preprocessing the model's own pretrained config (``resolve_data_config``):
``Resize(floor(size / crop_pct))`` with the config's interpolation, then ``CenterCrop(size)`` (``squash``:
square resize first), mean/std. Hub weights go through timm itself (strict, with its checkpoint
filter); ``model.weights`` loads a local file through the same path.
"""

from __future__ import annotations

import math
from typing import Any

from cbmir.errors import ConfigError, WeightsError
from cbmir.models.common import plain, wants_weights, with_crop
from cbmir.models.openclip import check_folder_name
from cbmir.models.registry import INTERPOLATIONS, Backbone, Preprocess, register
from cbmir.models.weights import file_identity, hub_errors, resolve_weights_file


def preprocess_from_timm(data_cfg: dict[str, Any]) -> tuple[Preprocess, int | None]:
    size = data_cfg["input_size"][-1]
    if data_cfg["input_size"][-2] != size:
        raise ConfigError(f"timm input size {data_cfg['input_size']} is not square")
    crop_pct = float(data_cfg.get("crop_pct") or 1.0)
    mode = data_cfg.get("crop_mode", "center") or "center"
    if mode not in ("center", "squash"):
        raise ConfigError(f"timm crop_mode {mode!r} is not supported (only center and squash)")
    interpolation = data_cfg.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"timm interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
    scale = math.floor(size / crop_pct)
    spec = Preprocess(
        input_size=int(scale),
        resize="resize_crop" if mode == "center" else "resize",
        interpolation=interpolation,
        mean=tuple(float(v) for v in data_cfg["mean"]),
        std=tuple(float(v) for v in data_cfg["std"]),
    )
    return spec, (int(size) if scale != size else None)


@register("timm")
def load_timm(cfg: Any) -> Backbone:
    import timm
    from timm.data import resolve_data_config

    check_folder_name(cfg)
    if not cfg.get("arch"):
        raise ConfigError("model=timm needs model.arch=<timm model name or hf-hub:org/repo>")
    arch = str(cfg.arch)
    kwargs = dict(plain(cfg.get("kwargs")) or {})
    overlay: dict[str, Any] = {}
    if cfg.get("weights"):
        path = resolve_weights_file(
            cfg.weights, ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        )
        overlay = {"file": str(path)}
        source = file_identity(path)
    elif wants_weights(cfg):
        source = arch if arch.startswith("hf-hub:") else f"timm:{arch}"
    else:
        source = "random"
    pretrained = source != "random"
    repo = arch[len("hf-hub:") :] if arch.startswith("hf-hub:") else f"timm/{arch}"
    try:
        with hub_errors(repo, model=cfg.name):
            model = timm.create_model(
                arch, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay or None, **kwargs
            )
    except RuntimeError as exc:  # timm's strict load_state_dict
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"the weights of {arch} do not fit: {exc}") from exc
    spec, crop = preprocess_from_timm(resolve_data_config({}, model=model))
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return Backbone(
        net=with_crop(model, crop),
        preprocess=spec,
        dim=dim,
        unit_norm=False,
        identity={"family": "timm", "arch": arch, "kwargs": kwargs, "weights": source},
    )
