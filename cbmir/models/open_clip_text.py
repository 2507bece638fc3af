"""Text tower of any open_clip model (OpenCLIP, QuiltNet, PLIP, …): ``encode_text(ids, normalize=True)``.

The whole model is built and loaded strictly by :func:`cbmir.models.open_clip.build_open_clip` (the same file
as the image tower), then the image tower is dropped. The tokenizer is open_clip's own for the model
(``open_clip.get_tokenizer``): the OpenAI byte-level BPE vocabulary shipped inside open_clip
(``bpe_simple_vocab_16e6.txt.gz``, context 77, lower case, ftfy + whitespace clean, ``<start_of_text>`` …
``<end_of_text>``, zero padding, truncation keeping the end token), or the Hugging Face tokenizer a model's
config names, read from the hub cache.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.errors import WeightsError
from cbmir.models.open_clip import build_open_clip
from cbmir.models.text import TextTower


class OpenClipText(nn.Module):
    """``CLIP.encode_text(ids, normalize=True)`` with the image tower removed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model.visual = nn.Identity()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        if getattr(m, "text_pool_type", None) != "argmax" or getattr(m, "attn_mask", None) is None:
            return m.encode_text(ids, normalize=True)
        # CLIP's causal text tower pools the end token (the largest id): later positions cannot change it, so the
        # batch is cut after its last end token (a short prompt costs a few positions, not 77; same output)
        n = int(ids.argmax(dim=-1).max()) + 1
        ids = ids[:, :n]
        x = m.token_embedding(ids) + m.positional_embedding[:n]
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
        x = x[torch.arange(len(ids)), ids.argmax(dim=-1)]
        x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return F.normalize(x, dim=-1)


def load_open_clip_text(cfg: Any) -> TextTower:
    import open_clip

    model, _, source, arch, tag = build_open_clip(cfg)
    name = next((str(s) for s in (tag, arch) if s and str(s).startswith("hf-hub:")), arch)
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # an HF tokenizer that is neither cached nor reachable
        raise WeightsError(f"the tokenizer of {name} (model {cfg.get('name')}) could not be loaded: {exc}") from exc
    net = OpenClipText(model).eval()
    with torch.no_grad():
        dim = int(net(tokenizer(["a"])).shape[-1])  # CLIP and CustomTextCLIP keep their width in different places
    identity = {
        "family": "open_clip",
        "arch": arch,
        "tag": tag,
        "text": "encode_text(normalize=True)",
        "tokenizer": f"{type(tokenizer).__name__}(context={getattr(tokenizer, 'context_length', None)})",
        "weights": source,
    }
    return TextTower(net=net, tokenize=tokenizer, dim=dim, identity=identity)
