"""OpenCLIP image towers (family ``open_clip``): ``encode_image`` of any open_clip model.

Two configs use it: ``conf/model/open_clip.yaml`` (any model, named by its arch and tag) and the study's
``conf/model/openclip.yaml`` (ViT-g-14, laion2b_s34b_b88k).

``arch`` is an open_clip model name (``ViT-g-14``) with ``tag`` a pretrained tag (``laion2b_s34b_b88k``):
the weights come from the tag's hub repository (open_clip's own table: ``open_clip_model.safetensors``,
else ``open_clip_pytorch_model.bin``), or from ``model.weights``. A ``tag`` (or ``arch``) of the form
``hf-hub:org/repo`` builds the model from that repository's ``open_clip_config.json`` instead. Loading goes
through open_clip's ``load_checkpoint`` with ``strict=True``. Only the image tower is kept after loading.

Preprocessing comes from the model's own preprocess config (size, mean/std, interpolation, resize mode):
``shortest`` = Resize + CenterCrop, ``squash`` = square resize. The embedding is ``encode_image(x,
normalize=model.normalize)``; the study used ViT-g-14 unnormalised, under fp16 autocast on GPU (run with
``precision=16-mixed`` for parity).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.errors import ConfigError, WeightsError
from cbmir.models.base import INTERPOLATIONS, Backbone, Preprocess
from cbmir.models.common import check_folder_name, plain
from cbmir.models.weights import file_identity, hub_download, hub_identity, resolve_weights_file, wants_weights

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenClipImage(nn.Module):
    """``CLIP.encode_image``: the visual tower, then optional L2 normalisation."""

    def __init__(self, visual: nn.Module, *, normalize: bool):
        super().__init__()
        self.visual = visual
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.visual(x)
        if isinstance(out, tuple):  # CoCa-style towers return (pooled, tokens)
            out = out[0]
        return F.normalize(out, dim=-1) if self.normalize else out


def preprocess_from_open_clip(pcfg: dict[str, Any]) -> Preprocess:
    size = pcfg["size"]
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ConfigError(f"open_clip preprocess size {size} is not square")
        size = size[0]
    mode = pcfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ConfigError(f"open_clip resize_mode {mode!r} is not supported (only shortest and squash)")
    interpolation = pcfg.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"open_clip interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
    return Preprocess(
        input_size=int(size),
        resize="resize_crop" if mode == "shortest" else "resize",
        interpolation=interpolation,
        mean=tuple(float(v) for v in pcfg["mean"]),
        std=tuple(float(v) for v in pcfg["std"]),
    )


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs "No pretrained weights loaded" for every model built without its own download."""
    logger = logging.getLogger()
    quiet = logging.Filter()
    quiet.filter = lambda record: "No pretrained weights loaded" not in record.getMessage()  # type: ignore[method-assign]
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _load_strict(model: nn.Module, path: Path, source: str) -> None:
    """open_clip's own strict loader: it converts older and third-party layouts, which is not ours to copy."""
    import open_clip

    try:
        open_clip.load_checkpoint(model, str(path), strict=True)
    except WeightsError:
        raise
    except Exception as exc:  # missing/unexpected keys, shape mismatches, unreadable files
        raise WeightsError(f"{source} does not fit the model: {exc}") from exc


def _checkpoint(cfg: Any, repo: str | None, revision: str | None, what: str) -> tuple[Path | None, str]:
    """The file to load (``model.weights``, else the hub repository's) and its identity; ``None`` for random weights."""
    if cfg.get("weights"):
        path = resolve_weights_file(cfg.weights, OPEN_CLIP_FILES)
        return path, file_identity(path)
    if not wants_weights(cfg):
        return None, "random"
    if not repo:
        raise WeightsError(f"{what} has no hub repository in open_clip's table; pass model.weights=/path/to/file")
    path = hub_download(repo, OPEN_CLIP_FILES, model=cfg.name, revision=revision)
    assert path is not None
    return path, hub_identity(path, repo, revision)


def _build_from_hub_config(cfg: Any, repo: str, revision: str | None) -> tuple[nn.Module, dict, str]:
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg_file = hub_download(repo, "open_clip_config.json", model=cfg.name, revision=revision)
    assert cfg_file is not None
    hub_cfg = json.loads(Path(cfg_file).read_text())
    ckpt, source = _checkpoint(cfg, repo, revision, repo)
    model_cfg = dict(hub_cfg["model_cfg"])
    name = f"cbmir-{repo.replace('/', '--')}"
    open_clip.factory._MODEL_CONFIGS[name] = model_cfg  # register the hub config under a private name
    with _quiet_open_clip():
        model = open_clip.create_model(name, pretrained=None, device=torch.get_default_device())
    if ckpt is not None:
        _load_strict(model, Path(ckpt), source)
    pcfg = merge_preprocess_dict(asdict(PreprocessCfg()), hub_cfg.get("preprocess_cfg", {}))
    pcfg["size"] = model.visual.image_size
    return model, pcfg, source


def build_open_clip(cfg: Any) -> tuple[nn.Module, dict, str, str | None, Any]:
    """The whole open_clip model (both towers), loaded strictly: ``(model, preprocess cfg, weights id, arch, tag)``."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    check_folder_name(cfg)
    arch, tag = cfg.get("arch"), cfg.get("tag")
    if not arch and not (tag and str(tag).startswith("hf-hub:")):
        raise ConfigError(
            "model=open_clip needs model.arch=<open_clip model> (and model.tag=<pretrained tag>)"
            " or model.tag=hf-hub:<org/repo>"
        )
    arch = str(arch) if arch else None
    hub = plain(cfg.get("hub")) or {}
    revision = hub.get("revision")
    hub_id = next((s for s in (tag, arch) if s and str(s).startswith("hf-hub:")), None)
    if hub_id:
        model, pcfg, source = _build_from_hub_config(cfg, str(hub_id)[len("hf-hub:") :].strip("/"), revision)
    else:
        if open_clip.get_model_config(str(arch)) is None:
            raise ConfigError(f"model.arch={arch!r} is not an open_clip model; see open_clip.list_models()")
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
        if tag and not tag_cfg:
            raise ConfigError(
                f"model.tag={tag!r} is not a pretrained tag of {arch}: {open_clip.list_pretrained_tags_by_model(arch)}"
            )
        # weights first: a hub or file problem shows before anything is built
        repo = hub.get("repo") or (tag_cfg.get("hf_hub") or "").strip("/")
        ckpt, source = _checkpoint(cfg, repo, revision, f"{arch}/{tag}")
        with _quiet_open_clip():
            model = open_clip.create_model(
                arch,
                pretrained=None,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                device=torch.get_default_device(),
            )
        if ckpt is not None:
            _load_strict(model, Path(ckpt), source)
        pcfg = merge_preprocess_dict(asdict(PreprocessCfg()), tag_cfg)
        pcfg["size"] = model.visual.image_size
    return model, pcfg, source, arch, tag


def load_open_clip(cfg: Any) -> Backbone:
    model, pcfg, source, arch, tag = build_open_clip(cfg)
    normalize = bool(cfg.get("normalize", False))
    visual = model.visual
    dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[-1])
    net = OpenClipImage(visual, normalize=normalize)
    del model  # keep only the image tower
    return Backbone(
        net=net,
        preprocess=preprocess_from_open_clip(pcfg),
        dim=dim,
        unit_norm=normalize,
        identity={"family": "open_clip", "arch": arch, "tag": tag, "normalize": normalize, "weights": source},
    )
