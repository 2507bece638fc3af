"""Text towers of the vision-language backbones: which models have one, how to build it, where its tokenizer is.

A model YAML declares its text tower in a ``text`` block::

    text:
      family: conch                 # key of TEXT_FAMILIES below (the module holding the tower and its tokenizer)
      tokenizer: conch_byte_level_bpe_uncased.json   # the official file name (families that need one)
      image: {proj_contrast: true}  # model keys that put the image tower in the joint image-text space
      templates: [...]              # the authors' prompt templates (CLASSNAME is replaced by a class name)

The image side of every text comparison must be in the joint space (CONCH's study embedding is the
pre-projection ``ln_contrast`` output, which is not aligned with the text tower): :func:`joint_model_cfg`
applies ``text.image`` to the model config, so the joint-space image embeddings get their own cache key.
A model without a ``text`` block refuses text in one line (``text_missing`` says why, where known).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cbmir.errors import ConfigError, WeightsError
from cbmir.models import plain

if TYPE_CHECKING:  # torch only where a tower is built: validating a text protocol imports no torch
    import torch
    from torch import nn

#: text family -> "module:function" (relative to ``cbmir.models``); the function turns a model config into a TextTower.
TEXT_FAMILIES: dict[str, str] = {
    "conch": "conch_text:load_conch_text",  # CONCH v1's CoCa text encoder + its byte-level BPE tokenizer
    "open_clip": "open_clip_text:load_open_clip_text",  # any open_clip model's encode_text + open_clip's tokenizer
    "biomedclip": "biomedclip_text:load_biomedclip_text",  # PubMedBERT + MLP projection, open_clip's HFTokenizer
    "medclip": "medclip_text:load_medclip_text",  # Bio_ClinicalBERT (layers 1, 2, last averaged) + linear projection
}

#: BERT-base, the text encoder of BiomedCLIP (PubMedBERT) and MedCLIP (Bio_ClinicalBERT): each family sets its
#: vocabulary; ``model.text.arch`` may override any key (a tiny tower in tests)
BERT_BASE = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    "layer_norm_eps": 1e-12,
}


def bert_arch(block: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``model.text.arch`` applied; an unknown key is a one-line error."""
    arch = {**base, **(block.get("arch") or {})}
    if unknown := set(arch) - set(base):
        raise ConfigError(f"model.text.arch has unknown keys {sorted(unknown)}; known: {sorted(base)}")
    return arch


#: the placeholder of a prompt template
CLASSNAME = "CLASSNAME"


class NoTextTowerError(ConfigError):
    """A text protocol or text query asked of a model that has no (implemented) text tower."""


@dataclass
class TextTower:
    """A frozen text encoder: ``tokenize(texts)`` gives token ids, ``net(ids)`` unit-norm joint-space embeddings."""

    net: nn.Module
    tokenize: Callable[[Sequence[str]], torch.Tensor]
    dim: int
    identity: dict[str, Any] = field(default_factory=dict)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit vectors, as the official ``encode_text(normalize=True)``."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.net.eval()
        device = next(self.net.parameters()).device
        with torch.no_grad():
            out = [
                self.net(self.tokenize(list(texts[i : i + batch_size])).to(device)).float().cpu()
                for i in range(0, len(texts), batch_size)
            ]
        return torch.cat(out).numpy().astype(np.float32, copy=False)


def text_block(cfg_model: Any) -> dict[str, Any] | None:
    block = plain(cfg_model.get("text")) if cfg_model is not None else None
    return block or None


def has_text(cfg_model: Any) -> bool:
    block = text_block(cfg_model)
    return bool(block and block.get("family") in TEXT_FAMILIES)


def require_text(cfg_model: Any, what: str = "text") -> dict[str, Any]:
    """The model's ``text`` block, or one line saying that it has no text tower (and why, where known)."""
    block = text_block(cfg_model)
    name = cfg_model.get("name") if cfg_model is not None else None
    if not block:
        why = cfg_model.get("text_missing") if cfg_model is not None else None
        reason = f": {why}" if why else ""
        raise NoTextTowerError(
            f"model {name} has no text tower in cbmir{reason}; {what} needs a vision-language model with one "
            f"(text towers: {', '.join(sorted(TEXT_FAMILIES))} families, e.g. model=conch or model=openclip)"
        )
    if block.get("family") not in TEXT_FAMILIES:
        raise ConfigError(f"model.text.family {block.get('family')!r} is not one of {sorted(TEXT_FAMILIES)}")
    return block


def joint_model_cfg(cfg_model: Any) -> Any:
    """A copy of the model config whose image tower gives joint-space embeddings (``text.image`` applied)."""
    block = require_text(cfg_model)
    out = copy.deepcopy(cfg_model)
    try:
        from omegaconf import OmegaConf, open_dict

        if OmegaConf.is_config(out):
            with open_dict(out):
                for key, value in (block.get("image") or {}).items():
                    out[key] = value
            return out
    except ImportError:  # pragma: no cover
        pass
    out.update(block.get("image") or {})
    return out


def load_text_tower(cfg_model: Any) -> TextTower:
    """Build the model's text tower in eval mode with gradients off (weights: the image tower's file)."""
    block = require_text(cfg_model)
    module, function = TEXT_FAMILIES[block["family"]].split(":")
    tower: TextTower = getattr(importlib.import_module(f"cbmir.models.{module}"), function)(cfg_model)
    tower.net.eval().requires_grad_(False)
    return tower


def tokenizer_file(cfg_model: Any, name: str, *, repo: str | None = None, extra: Sequence[Path] = ()) -> Path:
    """The official tokenizer file ``name``: beside ``model.weights``, then in the hub cache, then ``extra``.

    Never downloads: a missing file raises one line naming every place looked at.
    """
    places: list[Path] = []
    weights = cfg_model.get("weights")
    if weights:
        p = Path(str(weights)).expanduser()
        places.append((p if p.is_dir() else p.parent) / name)
    hub = plain(cfg_model.get("hub")) or {}
    repo = repo or hub.get("repo")
    for candidate in places:
        if candidate.is_file():
            return candidate
    if repo:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, name, revision=hub.get("revision"))
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    for folder in extra:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    looked = [str(p) for p in places] + ([f"hub cache {repo}/{name}"] if repo else [])
    looked += [str(Path(f) / name) for f in extra]
    raise WeightsError(
        f"tokenizer file {name} of model {cfg_model.get('name')} not found; looked in: {'; '.join(looked)}. "
        f"Put the official file beside the weights file (model.weights)."
    )


def prompt_texts(templates: Sequence[str], classnames: Sequence[Sequence[str]]) -> list[list[str]]:
    """Every class's prompts: each template with each of the class's names (CONCH's and CLIP's ensemble)."""
    if not templates:
        raise ConfigError("prompts.templates is empty")
    for t in templates:
        if CLASSNAME not in t:
            raise ConfigError(f"prompt template {t!r} has no {CLASSNAME} placeholder")
    return [[t.replace(CLASSNAME, name) for name in names for t in templates] for names in classnames]


def ensemble(embeddings: np.ndarray) -> np.ndarray:
    """Mean of unit vectors (rows), renormalised: the zero-shot classifier weight of one class (Radford et al. 2021)."""
    mean = np.asarray(embeddings, dtype=np.float64).mean(0)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm > 0 else mean).astype(np.float32)
