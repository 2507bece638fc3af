"""CONCH v1 text tower and tokenizer (Lu et al., Nature Medicine 2024), re-implemented without the ``conch`` package.

Tower (``conch/open_clip_custom/transformer.py::TextTransformer`` with ``conch_ViT-B-16.json``'s ``text_cfg``):
token embedding (32007 × 768) + a learned ``cls_emb`` appended after the 127 text tokens, positional embedding
(128 × 768), 12 pre-LN residual blocks (``nn.MultiheadAttention(768, 12)``, GELU MLP 3072), a causal mask plus
upstream's CLS mask (the CLS row sees position 0 always and position j+1 where token j is not padding: upstream's
off-by-one, kept; positions the CLS cannot see are skipped), ``ln_final`` on the CLS output,
``@ text_projection`` (768 × 512), L2. That is
``CoCa.encode_text(ids, normalize=True, embed_cls=True)``, which drops the last id to make room for the CLS.
Keys: the checkpoint's ``text.*`` (the same ``pytorch_model.bin`` as the image tower), strict.

Tokenizer (``custom_tokenizer.py``): the byte-level BPE ``conch_byte_level_bpe_uncased.json`` (NFD, strip accents,
lower case; ``<start_of_text>`` … ``<end_of_text>``; ``<pad>`` = 0), encoded with max_length 127, truncation and
padding to 127, then one ``<pad>`` appended (128). Upstream calls transformers' ``batch_encode_plus``, removed in
transformers 5; the same arguments are reproduced here on the ``tokenizers`` library.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbmir.errors import ConfigError, WeightsError
from cbmir.models.common import plain
from cbmir.models.text import TextTower, tokenizer_file
from cbmir.models.weights import load_weights

CONTEXT = 128
TOKENIZER_FILE = "conch_byte_level_bpe_uncased.json"


class Block(nn.Module):
    """open_clip's ``ResidualAttentionBlock`` (sequence-first), as CONCH's text encoder uses it."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width))
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Blocks(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads) for _ in range(layers))


class ConchText(nn.Module):
    """``forward(ids (B, 128))`` = ``CoCa.encode_text(ids, normalize=True)``: (B, 512) unit vectors."""

    def __init__(
        self,
        *,
        context: int = CONTEXT,
        vocab: int = 32007,
        width: int = 768,
        heads: int = 12,
        layers: int = 12,
        dim: int = 512,
    ):
        super().__init__()
        self.heads, self.pad_id = heads, 0
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.cls_emb = nn.Parameter(torch.zeros(width))
        self.transformer = Blocks(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        text = ids[:, :-1]  # embed_cls: the last position is the CLS token's
        b, n = text.shape
        real = text != self.pad_id
        # The text is causal and the CLS sees keys 0..m (m = the longest text, its first padding included) and
        # itself only when the text fills the context: every later position is masked out of what the CLS sees,
        # so they are left out of the computation (a short prompt costs a few positions, not 128; same output).
        m = min(n, int(real.sum(1).max()) + 1) if b else n
        x = torch.cat([self.token_embedding(text[:, :m]), self.cls_emb.expand(b, 1, -1)], dim=1)
        x = x + torch.cat([self.positional_embedding[:m], self.positional_embedding[n : n + 1]])
        allowed = torch.ones(b, m + 1, m + 1, dtype=torch.bool, device=ids.device)
        allowed[:, m, 1:m] = real[:, : m - 1]  # upstream's CLS row: key j+1 open where token j is text
        allowed[:, m, m] = real[:, n - 1]  # the CLS itself only after a text that fills the context
        mask = torch.zeros(b, m + 1, m + 1, dtype=x.dtype, device=ids.device).masked_fill(~allowed, float("-inf"))
        mask = mask + torch.full((m + 1, m + 1), float("-inf"), dtype=x.dtype, device=ids.device).triu(1)
        mask = mask.repeat_interleave(self.heads, 0)
        x = x.transpose(0, 1)  # NLD -> LND
        for block in self.transformer.resblocks:
            x = block(x, mask)
        pooled = self.ln_final(x[-1]) @ self.text_projection
        return F.normalize(pooled, dim=-1)


class ConchTokenizer:
    """The official tokenizer file with upstream's ``tokenize`` arguments: ``(B, 128)`` int64 ids."""

    def __init__(self, path: Path, context: int = CONTEXT):
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.tokenizer = Tokenizer.from_file(str(path))
        self.pad_id = self.tokenizer.token_to_id("<pad>")
        if self.pad_id is None:
            raise WeightsError(f"{path} has no <pad> token: not CONCH's tokenizer file")
        self.tokenizer.enable_truncation(max_length=context - 1)
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token="<pad>", length=context - 1)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        ids = torch.tensor([e.ids for e in self.tokenizer.encode_batch(list(texts))], dtype=torch.long)
        return F.pad(ids, (0, 1), value=self.pad_id)


def conch_text_key_map(sd: Mapping[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Released CoCa checkpoint → :class:`ConchText` keys: ``text.*`` with the prefix stripped."""
    return {k[len("text.") :]: v for k, v in sd.items() if k.startswith("text.")}


def _package_dirs() -> list[Path]:
    """The installed ``conch`` package's tokenizer folder, where it is installed (it ships the file)."""
    import importlib.util

    spec = importlib.util.find_spec("conch")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / "open_clip_custom" / "tokenizers" for p in spec.submodule_search_locations]


#: ``conch_ViT-B-16.json``'s text_cfg (``model.text.arch`` may override it, e.g. a tiny tower in tests)
ARCH = {"context": CONTEXT, "vocab": 32007, "width": 768, "heads": 12, "layers": 12, "dim": 512}


def load_conch_text(cfg: Any) -> TextTower:
    block = plain(cfg.get("text")) or {}
    arch = {**ARCH, **(block.get("arch") or {})}
    if unknown := set(arch) - set(ARCH):
        raise ConfigError(f"model.text.arch has unknown keys {sorted(unknown)}; known: {sorted(ARCH)}")
    path = tokenizer_file(cfg, str(block.get("tokenizer") or TOKENIZER_FILE), extra=_package_dirs())
    tokenizer = ConchTokenizer(path, context=int(arch["context"]))
    net, weights = load_weights(cfg, lambda: ConchText(**{k: int(v) for k, v in arch.items()}), conch_text_key_map)
    identity = {"family": "conch", "text": "encode_text(normalize=True)", "tokenizer": path.name, "weights": weights}
    return TextTower(net=net, tokenize=tokenizer, dim=int(arch["dim"]), identity=identity)
