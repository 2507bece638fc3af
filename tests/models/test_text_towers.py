"""Text towers: CONCH's CoCa text encoder and tokenizer, open_clip's encode_text, and models that have none.

CONCH's tower is compared with open_clip's ``TextTransformer`` (the code CONCH's ``transformer.py`` copied, with
the original CoCa CLS mask), written independently of cbmir's, on seeded weights in the released key layout
(``text.*`` of ``pytorch_model.bin``). The official tokenizer file is not installed here (the ``conch`` package is
not on PyPI): a tiny file with the official pipeline is built in the test, and cbmir's ids are compared with
upstream's call (transformers' fast tokenizer with CONCH's arguments; ``batch_encode_plus`` is gone in
transformers 5, so its arguments go through ``__call__``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cbmir.errors import WeightsError
from cbmir.models.conch_text import ConchText, ConchTokenizer
from cbmir.models.text import NoTextTowerError, joint_model_cfg, load_text_tower, require_text
from tests.helpers.config import model_cfg
from tests.helpers.text_fixtures import TINY_CLIP, conch_layout_tokenizer, tiny_clip_registered

#: medical phrases: punctuation, numbers, accents, upper case, an over-long report (truncated at 127 ids)
PHRASES = [
    "an H&E image of cribriform prostate adenocarcinoma.",
    "Pleural effusion (left > right); Gleason 4+3=7, grade group 3.",
    "Naïve café-au-lait macules, 10 µm, ÉPITHÉLIUM — 2.5 cm",
    "CLASSNAME is present.",
    " ".join(["lymphocytes and mucus"] * 100),
]
TINY = {"context": 128, "vocab": 400, "width": 32, "heads": 4, "layers": 2, "dim": 24}


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return conch_layout_tokenizer(tmp_path_factory.mktemp("tok") / "conch_byte_level_bpe_uncased.json")


def official_tokenize(path, texts):
    """mahmoodlab/CONCH custom_tokenizer.py ``get_tokenizer`` + ``tokenize``, on transformers 5's ``__call__``."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<start_of_text>", eos_token="<end_of_text>", pad_token="<pad>"
    )
    ids = tok(
        texts,
        max_length=127,
        add_special_tokens=True,
        return_token_type_ids=False,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )["input_ids"]
    return F.pad(ids, (0, 1), value=tok.pad_token_id)


def test_conch_tokenizer_equals_the_official_call(tokenizer_path):
    ids = ConchTokenizer(tokenizer_path)(PHRASES)
    assert torch.equal(ids, official_tokenize(tokenizer_path, PHRASES))
    assert ids.shape == (5, 128) and ids.dtype == torch.long
    assert (ids[:, 0] == 1).all() and (ids[:, -1] == 0).all()  # <start_of_text> first, the CLS slot padded
    assert ids[4, 126] == 2 and (ids[4, :126] != 0).all()  # over-long: truncated to 127 with the end token kept
    first_end = int((ids[0] == 2).nonzero()[0])
    assert (ids[0, first_end + 1 :] == 0).all()
    # lower case and accents stripped (NFD + StripAccents + Lowercase), as the official normaliser
    assert torch.equal(*ConchTokenizer(tokenizer_path)(["NAÏVE CAFÉ", "naive cafe"]))


def seeded_reference(seed: int = 0, dim: int = TINY["dim"]):
    """open_clip's TextTransformer in CONCH's configuration (context 127 + CLS = 128 positions), all weights random."""
    from open_clip.transformer import TextTransformer

    torch.manual_seed(seed)
    ref = TextTransformer(
        context_length=TINY["context"] - 1,
        vocab_size=TINY["vocab"],
        width=TINY["width"],
        heads=TINY["heads"],
        layers=TINY["layers"],
        output_dim=dim,
        embed_cls=True,
        pad_id=0,
        pool_type="last",
    )
    with torch.no_grad():
        for p in ref.parameters():  # LayerNorm weights too: a swapped norm cannot hide
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] == TINY["width"] else 0.0))
    return ref.eval()


def test_conch_text_tower_equals_reference_on_hand_built_ids():
    ref = seeded_reference()
    net = ConchText(**TINY).eval()
    net.load_state_dict(ref.state_dict(), strict=True)
    ids = torch.zeros(3, 128, dtype=torch.long)
    ids[0, :5] = torch.tensor([1, 17, 42, 99, 2])  # short: the CLS must not see the padding
    ids[1, :127] = torch.randint(7, 400, (127,))  # full length
    ids[2, :3] = torch.tensor([1, 5, 2])
    with torch.no_grad():
        expected = F.normalize(ref(ids[:, :-1]), dim=-1)  # CoCa.encode_text: drop the last id, then normalise
        got = net(ids)
        padded_more = ids.clone()
        padded_more[0, 5:7] = torch.tensor([3, 4])  # tokens where padding was: the output must change
        assert not torch.allclose(net(padded_more)[0], got[0])
        short = net(ids[[0, 2]])  # no full-length row: the positions the CLS cannot see are skipped
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(short, expected[[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))


def released_conch_file(tmp_path, *, drop: str | None = None):
    """``pytorch_model.bin`` in CONCH's released layout (text.* here; visual.* is the image tests' part)."""
    sd = {f"text.{k}": v for k, v in seeded_reference().state_dict().items()}
    sd["logit_scale"] = torch.tensor(4.6)
    sd["visual.proj_contrast"] = torch.randn(512, 512)
    if drop:
        del sd[drop]
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    return path


def conch_text_cfg(weights):
    return model_cfg("conch", weights=str(weights), text={"arch": TINY})


def test_conch_text_loads_strictly_from_the_released_file_with_its_tokenizer(tmp_path, tokenizer_path):
    weights = released_conch_file(tmp_path)
    (tmp_path / tokenizer_path.name).write_bytes(tokenizer_path.read_bytes())  # beside the weights file
    tower = load_text_tower(conch_text_cfg(weights))
    assert tower.dim == 24 and tower.identity["tokenizer"] == tokenizer_path.name
    with torch.no_grad():
        expected = F.normalize(seeded_reference()(official_tokenize(tokenizer_path, PHRASES)[:, :-1]), dim=-1)
    np.testing.assert_allclose(tower.encode(PHRASES, batch_size=2), expected.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(tower.encode(PHRASES[:4]), expected[:4].numpy(), rtol=0, atol=1e-6)  # trimmed batch


def test_conch_text_refuses_a_missing_key_and_a_missing_tokenizer(tmp_path, tokenizer_path):
    weights = released_conch_file(tmp_path, drop="text.cls_emb")
    with pytest.raises(WeightsError, match=r"tokenizer file conch_byte_level_bpe_uncased.json .* looked in: .*"):
        load_text_tower(conch_text_cfg(weights))
    (tmp_path / tokenizer_path.name).write_bytes(tokenizer_path.read_bytes())
    with pytest.raises(WeightsError, match=r"1 missing keys \[cls_emb\]"):
        load_text_tower(conch_text_cfg(weights))


def test_open_clip_text_equals_encode_text_of_the_same_file(tmp_path):
    import open_clip

    with tiny_clip_registered():
        torch.manual_seed(1)
        model = open_clip.create_model(TINY_CLIP, pretrained=None).eval()
        torch.save(model.state_dict(), tmp_path / "open_clip_model.bin")
        cfg = model_cfg("open_clip", arch=TINY_CLIP, name="tiny_clip", weights=str(tmp_path / "open_clip_model.bin"))
        tower = load_text_tower(cfg)
        ids = open_clip.get_tokenizer(TINY_CLIP)(PHRASES)
        with torch.no_grad():
            expected = model.encode_text(ids, normalize=True).numpy()
    assert tower.dim == 16 and ids.shape == (5, 77)
    np.testing.assert_allclose(tower.encode(PHRASES), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tower.encode(PHRASES[:4]), expected[:4], rtol=0, atol=1e-6)  # cut after the end token


def test_joint_space_image_settings_are_their_own_model_config():
    conch = model_cfg("conch")
    assert conch.proj_contrast is False and joint_model_cfg(conch).proj_contrast is True
    openclip = model_cfg("openclip")
    assert openclip.normalize is False and joint_model_cfg(openclip).normalize is True


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("medsiglip", "SigLIP"),
        ("conch15", "image tower only"),
    ],
)
def test_models_without_a_text_tower_say_so_in_one_line(name, why):
    with pytest.raises(NoTextTowerError) as err:
        require_text(model_cfg(name), "text query")
    message = str(err.value)
    assert "\n" not in message and why in message and message.startswith(f"model {name} has no text tower")
    with pytest.raises(NoTextTowerError, match="model resnet50 has no text tower in cbmir; text query needs"):
        require_text(model_cfg("resnet50"), "text query")


TINY_BERT = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
}
BERT_WORDS = (
    "an h & e image of prostate adeno ##carcinoma pleural effusion . , ( ) ; 4 + 3 = 7 naive cafe 10 lymphocytes and "
    "mucus classname is present grade group left > right gleason - au lait macules"
).split()


def test_biomedclip_text_equals_open_clip_hf_text_encoder(tmp_path):
    """BiomedCLIP's released layout (text.transformer.*, text.proj.*) against open_clip's own HFTextEncoder, with a
    tiny BERT vocabulary (the official vocab.txt is not installed) read by open_clip's HFTokenizer."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.tokenizer import HFTokenizer
    from transformers import BertConfig

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]) + "\n")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    torch.manual_seed(4)
    config = BertConfig(**TINY_BERT, pad_token_id=0)
    ref = HFTextEncoder("bert", 512, config=config, pooler_type="cls_last_hidden_state_pooler", proj_type="mlp")
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = {f"text.{k}": v for k, v in ref.state_dict().items() if ".pooler." not in k}  # no pooling layer upstream
    sd["text.transformer.embeddings.position_ids"] = torch.arange(256)[None]  # what transformers 4.2x stored
    sd["visual.head.proj.weight"] = torch.randn(512, 768)
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    cfg = model_cfg("biomedclip", weights=str(tmp_path / "open_clip_pytorch_model.bin"), text={"arch": TINY_BERT})
    tower = load_text_tower(cfg)
    ids = HFTokenizer(str(tmp_path), context_length=256, clean="whitespace")(PHRASES)
    assert ids.shape == (5, 256) and (ids[:, 0] == 2).all()  # [CLS] first
    assert ids[4, 255] == 3 and (ids[0] == 0).sum() > 200  # over-long: [SEP] kept at the end; short: [PAD]s
    assert torch.equal(tower.tokenize(PHRASES), ids)
    with torch.no_grad():
        expected = F.normalize(ref.eval()(ids), dim=-1).numpy()
    np.testing.assert_allclose(tower.encode(PHRASES), expected, rtol=0, atol=1e-5)
    assert joint_model_cfg(cfg).normalize is True  # BiomedCLIP's study embedding is already the joint space


def test_medclip_text_equals_the_official_forward_on_each_text_alone(tmp_path):
    """MedCLIP's released layout (text_model.model.*, text_model.projection_head.weight) against the official
    ``MedCLIPTextModel.forward`` + ``encode_text`` run on each phrase tokenised alone, the tokenizer built by
    ``AutoTokenizer`` from a folder laid out like the Bio_ClinicalBERT repository (config.json and vocab.txt, no
    tokenizer_config.json), with the processor's ``model_max_length = 77``."""
    import json

    from transformers import AutoTokenizer, BertConfig, BertModel

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY_BERT}))
    official = AutoTokenizer.from_pretrained(str(tmp_path))
    official.model_max_length = 77
    torch.manual_seed(6)
    bert = BertModel(BertConfig(**TINY_BERT, pad_token_id=0)).eval()  # AutoModel.from_pretrained builds a BertModel
    projection = torch.nn.Linear(32, 512, bias=False)
    with torch.no_grad():
        for p in [*bert.parameters(), projection.weight]:
            p.add_(torch.randn_like(p) * 0.1)
    sd = {f"text_model.model.{k}": v for k, v in bert.state_dict().items()}
    sd["text_model.projection_head.weight"] = projection.weight.detach().clone()
    sd["text_model.model.embeddings.position_ids"] = torch.arange(256)[None]  # what transformers 4.2x stored
    sd["vision_model.projection_head.weight"] = torch.randn(512, 768)  # the image tower's keys beside
    torch.save(sd, tmp_path / "pytorch_model.bin")
    cfg = model_cfg("medclip", weights=str(tmp_path / "pytorch_model.bin"), text={"arch": TINY_BERT})
    tower = load_text_tower(cfg)

    def encode_alone(text: str) -> np.ndarray:  # the official forward, the text padded with nothing
        inputs = official([text], truncation=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = bert(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True
            )
            states = torch.stack([out["hidden_states"][1], out["hidden_states"][2], out["hidden_states"][-1]])
            embed = projection(states.permute(1, 0, 2, 3).mean(2).mean(1))
            return (embed / embed.norm(dim=-1, keepdim=True))[0].numpy()

    batch = official(PHRASES, truncation=True, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(tower.tokenize(PHRASES), batch) and batch.shape == (5, 77)  # the over-long one is cut at 77
    assert (batch[0] == 0).sum() > 50 and batch[2, 1] != 1  # padding; accents and case folded onto the vocabulary
    expected = np.stack([encode_alone(text) for text in PHRASES])
    np.testing.assert_allclose(tower.encode(PHRASES), expected, rtol=0, atol=1e-5)
    assert tower.identity["weights"].startswith("pytorch_model.bin") and joint_model_cfg(cfg).normalize is True
