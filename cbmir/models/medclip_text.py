"""MedCLIP text tower (Wang et al., EMNLP 2022): Bio_ClinicalBERT + a linear projection, as ``MedCLIPTextModel``.

The official ``MedCLIPTextModel.forward`` (RyanWangZf/MedCLIP ``medclip/modeling_medclip.py``) runs a transformers
``BertModel`` (``AutoModel.from_pretrained('emilyalsentzer/Bio_ClinicalBERT', output_hidden_states=True)``: BERT-base,
cased vocabulary of 28,996, pooling layer present and unused), stacks hidden states 1, 2 and the last, averages them
over the token positions and then over the three layers, and projects with ``projection_head``
(``Linear(768, 512, bias=False)``); ``MedCLIPModel.encode_text`` L2-normalises the result. Its mean over positions is
**not masked**: padding tokens enter it, so upstream a text's embedding depends on the batch it was padded with
(``padding=True`` pads to the longest text of the batch). cbmir gives every text the embedding the official code gives
it tokenised alone (no padding): the mean runs over the text's own tokens, the attention mask keeping the padding of
a batch out of everything else (tested against the official forward on each text alone).

Tokenizer: the official processor's, ``AutoTokenizer.from_pretrained('emilyalsentzer/Bio_ClinicalBERT')`` with
``model_max_length = 77`` called with ``truncation=True, padding=True``. That repository has no
``tokenizer_config.json``, so transformers builds a lower-casing ``BertTokenizerFast`` over its ``vocab.txt``; cbmir
builds the same from the files found beside the weights or in the hub cache of that repository (a
``tokenizer_config.json`` there, if any, is honoured). Keys: ``text_model.model.*`` and
``text_model.projection_head.weight`` of MedCLIP's ``pytorch_model.bin``, strict (a stored
``embeddings.position_ids`` buffer of older transformers is dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.models.common import plain
from cbmir.models.text import BERT_BASE, TextTower, bert_arch, tokenizer_file
from cbmir.models.weights import load_weights

#: the hub repository of the tokenizer (MedCLIP's weights themselves are not on the hub)
TOKENIZER_REPO = "emilyalsentzer/Bio_ClinicalBERT"
#: Bio_ClinicalBERT's config (``model.text.arch`` may override it, e.g. a tiny tower in tests)
ARCH = {**BERT_BASE, "vocab_size": 28996}
CONTEXT = 77
DIM = 512
#: the hidden states the official forward averages (the embeddings' output is 0)
LAYERS = (1, 2, -1)


class MedClipText(nn.Module):
    """``forward(ids)`` = ``MedCLIPModel.encode_text`` of each text on its own (see the module's docstring)."""

    def __init__(self, arch: Mapping[str, Any], dim: int = DIM):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(**arch)
        self.pad_id = int(config.pad_token_id)
        self.model = BertModel(config)  # with its pooling layer, as AutoModel builds it (unused)
        self.projection_head = nn.Linear(config.hidden_size, dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        states = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        layers = torch.stack([states[i] for i in LAYERS]).mean(0)  # (B, T, H)
        weight = mask.unsqueeze(-1).to(layers.dtype)
        pooled = (layers * weight).sum(1) / weight.sum(1).clamp(min=1)
        return F.normalize(self.projection_head(pooled), dim=-1)


def medclip_text_key_map(sd: Mapping[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    out = {k[len("text_model.") :]: v for k, v in sd.items() if k.startswith("text_model.")}
    out.pop("model.embeddings.position_ids", None)  # a buffer older transformers stored
    return out


class MedClipTokenizer:
    """The official processor's tokenizer: ``BertTokenizerFast`` over Bio_ClinicalBERT's ``vocab.txt``, 77 tokens."""

    def __init__(self, folder: Path, context: int = CONTEXT):
        from transformers import BertTokenizerFast

        # what AutoTokenizer resolves a BERT repository to, read from the folder (its tokenizer_config.json, if any,
        # applies; without one, transformers' defaults: lower case, accents stripped with it)
        self.tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        self.tokenizer.model_max_length = context

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), truncation=True, padding=True, return_tensors="pt")["input_ids"]


def load_medclip_text(cfg: Any) -> TextTower:
    block = plain(cfg.get("text")) or {}
    arch = bert_arch(block, ARCH)
    folder = tokenizer_file(cfg, "vocab.txt", repo=TOKENIZER_REPO).parent
    tokenizer = MedClipTokenizer(folder, int(block.get("context_length", CONTEXT)))
    net, weights = load_weights(cfg, lambda: MedClipText(arch), medclip_text_key_map)
    identity = {"family": "medclip", "text": "MedCLIPModel.encode_text, each text alone", "tokenizer": TOKENIZER_REPO}
    identity["weights"] = weights
    return TextTower(net=net, tokenize=tokenizer, dim=DIM, identity=identity)
