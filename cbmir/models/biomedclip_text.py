"""BiomedCLIP text tower (Zhang et al., 2023): PubMedBERT + an MLP projection, as open_clip's ``HFTextEncoder``.

``open_clip_config.json``'s ``text_cfg``: ``hf_model_name`` microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract,
``hf_proj_type`` mlp, ``hf_pooler_type`` cls_last_hidden_state_pooler, ``context_length`` 256. The tower is a
transformers ``BertModel`` without its pooling layer (open_clip builds it with ``add_pooling_layer=False`` for this
pooler), built offline from ``model.text.arch`` (BERT-base: 30522 × 768, 12 layers, 12 heads, 3072, 512 positions),
attention mask = ids ≠ pad, the last hidden state of the CLS token → ``Linear(768, 640, bias=False)`` → GELU →
``Linear(640, 512, bias=False)`` → L2 (``encode_text(normalize=True)``). Keys: the checkpoint's ``text.transformer.*``
and ``text.proj.{0,2}.weight``, strict (a stored ``embeddings.position_ids`` buffer of older transformers is dropped).

Tokenizer: open_clip's ``HFTokenizer`` (the official helper: whitespace clean, then the tokenizer with
``max_length=256, padding='max_length', truncation=True``) over the tokenizer files (``vocab.txt`` and
``tokenizer_config.json``) found beside the weights file or in the hub cache of the model's repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.errors import WeightsError
from cbmir.models.common import plain
from cbmir.models.text import BERT_BASE, TextTower, bert_arch, tokenizer_file
from cbmir.models.weights import load_weights

#: BiomedBERT-base's config (``model.text.arch`` may override it, e.g. a tiny tower in tests)
ARCH = BERT_BASE
CONTEXT = 256
DIM = 512


class BiomedClipText(nn.Module):
    """``forward(ids)`` = open_clip ``HFTextEncoder`` (CLS of the last hidden state, MLP projection), then L2."""

    def __init__(self, arch: Mapping[str, Any], dim: int = DIM):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(**arch)
        self.pad_id = int(config.pad_token_id)
        self.transformer = BertModel(config, add_pooling_layer=False)
        hidden = (config.hidden_size + dim) // 2
        self.proj = nn.Sequential(
            nn.Linear(config.hidden_size, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        cls = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return F.normalize(self.proj(cls), dim=-1)


def biomedclip_text_key_map(sd: Mapping[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    out = {k[len("text.") :]: v for k, v in sd.items() if k.startswith("text.")}
    out.pop("transformer.embeddings.position_ids", None)  # a buffer older transformers stored
    return out


def load_biomedclip_text(cfg: Any) -> TextTower:
    from open_clip.tokenizer import HFTokenizer

    block = plain(cfg.get("text")) or {}
    arch = bert_arch(block, ARCH)
    folder = tokenizer_file(cfg, "vocab.txt").parent
    if not (folder / "tokenizer_config.json").is_file():
        raise WeightsError(f"{folder} has vocab.txt but no tokenizer_config.json: put both official files there")
    tokenizer = HFTokenizer(str(folder), context_length=int(block.get("context_length", CONTEXT)), clean="whitespace")
    net, weights = load_weights(cfg, lambda: BiomedClipText(arch), biomedclip_text_key_map)
    identity = {"family": "biomedclip", "text": "encode_text(normalize=True)", "tokenizer": "vocab.txt"}
    identity["weights"] = weights
    return TextTower(net=net, tokenize=tokenizer, dim=DIM, identity=identity)
