"""Any timm model as a frozen encoder (family ``timm``, ``conf/model/timm.yaml``).

``model.arch`` is a timm name (with its pretrained tag) or ``hf-hub:org/repo``. The embedding is timm's
pooled feature vector (the forward of ``num_classes=0``), the preprocessing the model's own pretrained
config (``resolve_data_config``): ``Resize(floor(size / crop_pct))`` with the config's interpolation, then
``CenterCrop(size)`` (``squash``: square resize first), mean/std. Hub weights go through timm itself (strict,
with its checkpoint filter: :func:`cbmir.models.weights.create_timm_model`); ``model.weights`` loads a local
file through the same path.
"""

from __future__ import annotations

import math
from typing import Any

from cbmir.errors import ConfigError
from cbmir.models.base import INTERPOLATIONS, Backbone, Preprocess
from cbmir.models.common import check_folder_name, plain, with_crop
from cbmir.models.weights import create_timm_model, file_identity, wants_weights


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


def load_timm(cfg: Any) -> Backbone:
    from timm.data import resolve_data_config

    check_folder_name(cfg)
    if not cfg.get("arch"):
        raise ConfigError("model=timm needs model.arch=<timm model name or hf-hub:org/repo>")
    arch = str(cfg.arch)
    kwargs = dict(plain(cfg.get("kwargs")) or {})
    files = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    model, path = create_timm_model(cfg, arch, files=files, **kwargs)
    if path is not None:
        source = file_identity(path)
    elif wants_weights(cfg):
        source = arch if arch.startswith("hf-hub:") else f"timm:{arch}"
    else:
        source = "random"
    spec, crop = preprocess_from_timm(resolve_data_config({}, model=model))
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return Backbone(
        net=with_crop(model, crop),
        preprocess=spec,
        dim=dim,
        unit_norm=False,
        identity={"family": "timm", "arch": arch, "kwargs": kwargs, "weights": source},
    )
