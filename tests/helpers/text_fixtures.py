"""Tiny text towers for the text tests: a registered open_clip config and a byte-level BPE file in CONCH's layout."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

#: An open_clip CLIP with the real tokenizer (OpenAI BPE, context 77) and a 2-layer, 32-wide pair of towers.
TINY_CLIP = "cbmir-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLIP_OVERRIDES = ["model=open_clip", f"model.arch={TINY_CLIP}", "model.name=tiny_clip", "model.dim=16"]


@contextlib.contextmanager
def tiny_clip_registered() -> Iterator[str]:
    """open_clip knows :data:`TINY_CLIP` inside the block (its config table is process-wide: removed after)."""
    from open_clip import factory

    factory._MODEL_CONFIGS[TINY_CLIP] = json.loads(json.dumps(TINY_CLIP_CFG))
    try:
        yield TINY_CLIP
    finally:
        factory._MODEL_CONFIGS.pop(TINY_CLIP, None)


#: Phrases the tiny CONCH-layout tokenizer is trained on (its vocabulary covers them in few merges).
TRAINING_TEXT = [
    "an H&E image of cribriform prostate adenocarcinoma.",
    "a histopathological image showing lymphocytes, mucus and smooth muscle.",
    "pleural effusion; Gleason 4+3=7 (grade group 3), 10 µm, naïve café cells",
]


def conch_layout_tokenizer(path: Path, vocab_size: int = 400) -> Path:
    """A byte-level BPE file built like ``conch_byte_level_bpe_uncased.json`` (the official file is not installed).

    Same pipeline as the official file: NFD + strip accents + lower case, ByteLevel pre-tokenizer with a prefix
    space, the added tokens ``<pad>``=0, ``<start_of_text>``=1, ``<end_of_text>``=2 (and CONCH's four
    de-identification tokens), and a template adding the start and end tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["<pad>", "<start_of_text>", "<end_of_text>", "<|person|>", "<|mrn|>", "<|specimen_id|>", "<|date|>"]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>", special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)]
    )
    tok.save(str(path))
    return path
