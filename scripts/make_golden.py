"""Regenerate the reference embeddings in tests/golden/ from the OFFICIAL implementations.

The tests (tests/test_models_conch.py, test_models_medclip.py, test_models_biomedclip.py,
test_models_hf_vit.py) rebuild the same deterministic weights with cbmir's own code, push them through
cbmir's key maps with strict loading, and compare against these outputs. Only the small outputs and the
checkpoint key layouts are stored; weights are rebuilt from the recipe below (never stored).

Run each part in its own virtual environment OUTSIDE the project, with torch from PyPI:

  python -m venv /tmp/ref_conch && /tmp/ref_conch/bin/pip install torch==2.14.1 torchvision==0.29.1 \
      conch-fork open_clip_torch==3.3.0          # conch-fork pulls timm and transformers (5.x)
  /tmp/ref_conch/bin/python scripts/make_golden.py conch biomedclip hf

  python -m venv /tmp/ref_medclip && /tmp/ref_medclip/bin/pip install torch==2.14.1 torchvision==0.29.1 \
      medclip==0.0.3 transformers==4.24.0        # the transformers range upstream pins (<=4.24.0)
  /tmp/ref_medclip/bin/python scripts/make_golden.py medclip

Nothing here touches the network: hub downloads inside the official code are patched out (the towers are
built from their configs) and the official loaders read the seeded checkpoint from a temporary folder.

Recipe: every floating tensor of the released checkpoint layout, per key,
``torch.Generator().manual_seed(zlib.crc32(key.encode()))``, ``randn * 0.05``, ``+1`` for 1-D ``*.weight``
(LayerNorm scales); integer buffers keep the official values. Inputs: ``randn`` from generator seed 1234.
"""

from __future__ import annotations

import json
import sys
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
INPUT_SEED = 1234
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MEDCLIP_MEAN, MEDCLIP_STD = 0.5862785803043838, 0.27950088968644304


# ------------------------------------------------------------------------------------------ the recipe


def seeded_tensor(key: str, shape: Iterable[int]) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    t = torch.randn(shape, generator=g) * 0.05
    if key.endswith(".weight") and len(shape) == 1:
        t = t + 1.0
    return t


def seeded_state_dict(
    layout: Mapping[str, Mapping], keep: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """``layout``: key → {"shape": [...], "dtype": "float32" | "int64" ...}. Integer entries come from ``keep``
    (the official buffers) or are zeros (for loaders that drop them)."""
    out = {}
    for key in sorted(layout):
        spec = layout[key]
        if spec["dtype"].startswith("float"):
            out[key] = seeded_tensor(key, spec["shape"])
        elif keep is not None and key in keep:
            out[key] = keep[key].clone()
        else:
            out[key] = torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
    return out


def model_input(shape: Iterable[int], seed: int = INPUT_SEED) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def synthetic_image(h: int, w: int, mode: str, seed: int) -> np.ndarray:
    """uint8 test image (legacy RandomState: stable across numpy versions): smooth ramps plus noise."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (96 + 80 * np.sin(xx / 5.0) * np.cos(yy / 7.0))[..., None]
    channels = 3 if mode == "RGB" else 1
    img = base + rng.randint(-60, 61, size=(h, w, channels))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img if mode == "RGB" else img[..., 0]


def layout_of(sd: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in sd.items()}


def _save(name: str, layout: Mapping[str, Mapping] | None, **arrays) -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    if layout is not None:
        (GOLDEN / f"{name}_keys.json").write_text(json.dumps(layout, indent=0, sort_keys=True) + "\n")
    arrays["versions"] = np.array(json.dumps(_versions()))
    np.savez_compressed(GOLDEN / f"{name}.npz", **arrays)
    print(f"wrote {GOLDEN / name}.npz", {k: v.shape for k, v in arrays.items()})


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in (
        "torch",
        "torchvision",
        "timm",
        "open_clip_torch",
        "conch-fork",
        "medclip",
        "transformers",
        "numpy",
        "pillow",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _assert_all_loaded(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> None:
    """Upstream loaders use strict=False: check that every parameter really came from the file."""
    for key, value in model.state_dict().items():
        if key.startswith(ignore):
            continue
        assert key in sd, f"{key} not in the seeded checkpoint"
        assert torch.equal(value, sd[key].to(value.dtype)), f"{key} was not loaded"


# ------------------------------------------------------------------------------------------------ CONCH


def make_conch() -> None:
    from conch.open_clip_custom import create_model_from_pretrained
    from conch.open_clip_custom.coca_model import CoCa
    from conch.open_clip_custom.factory import CFG_DIR
    from PIL import Image
    from torchvision import transforms as T

    cfg = json.loads((CFG_DIR / "conch_ViT-B-16.json").read_text())
    cfg.pop("custom_text", None)
    torch.manual_seed(0)
    template = CoCa(**cfg).state_dict()
    released = {k: v for k, v in template.items() if not k.startswith("text_decoder.")}  # as the hub file
    sd = seeded_state_dict(layout_of(released), keep=released)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pytorch_model.bin"
        torch.save(sd, path)
        model, preprocess = create_model_from_pretrained("conch_ViT-B-16", checkpoint_path=str(path))
    model.eval()
    _assert_all_loaded(model, sd, ignore=("text_decoder.",))
    x = model_input((2, 3, 448, 448))
    with torch.inference_mode():
        study = model.encode_image(x, proj_contrast=False, normalize=True)
        projected = model.encode_image(x, proj_contrast=True, normalize=False)
    # the official transform is torchvision's Compose below (checked here, used as the reference in the tests)
    ours = T.Compose(
        [
            T.Resize(448, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(448),
            T.Lambda(lambda im: im.convert("RGB")),
            T.ToTensor(),
            T.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    for h, w, mode, seed in ((28, 28, "RGB", 1), (64, 64, "L", 2), (300, 200, "RGB", 3)):
        im = Image.fromarray(synthetic_image(h, w, mode, seed))
        assert torch.equal(preprocess(im), ours(im)), "CONCH's transform is not the documented Compose"
    visual = {k: v for k, v in layout_of(released).items() if k.startswith("visual.")}
    _save(
        "conch",
        visual,
        study=study.numpy(),
        projected=projected.numpy(),
        n_released_keys=np.array(len(released)),
        transform_is_torchvision_compose=np.array(True),
    )


# ------------------------------------------------------------------------------------------- BiomedCLIP

BIOMEDCLIP_VISION_CFG = {  # open_clip_config.json of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224
    "timm_model_name": "vit_base_patch16_224",
    "timm_model_pretrained": False,
    "timm_pool": "",
    "timm_proj": "linear",
    "image_size": 224,
}


def make_biomedclip() -> None:
    import torch.nn.functional as F
    from open_clip.model import _build_vision_tower
    from open_clip.transform import image_transform
    from PIL import Image
    from torchvision import transforms as T

    torch.manual_seed(0)
    visual = _build_vision_tower(512, BIOMEDCLIP_VISION_CFG)
    layout = {f"visual.{k}": v for k, v in layout_of(visual.state_dict()).items()}
    sd = seeded_state_dict(layout)
    with tempfile.TemporaryDirectory() as tmp:  # the released file also holds text.* and logit_scale
        path = Path(tmp) / "open_clip_pytorch_model.bin"
        torch.save({**sd, "logit_scale": torch.tensor(4.6)}, path)
        loaded = torch.load(path, weights_only=True)
    visual.load_state_dict({k[len("visual.") :]: v for k, v in loaded.items() if k.startswith("visual.")}, strict=True)
    visual.eval()
    x = model_input((2, 3, 224, 224))
    img = synthetic_image(224, 224, "RGB", 4)
    preprocess = image_transform(224, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    ours = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.Lambda(lambda im: im.convert("RGB")),
            T.ToTensor(),
            T.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    for h, w, mode, seed in ((28, 28, "RGB", 1), (64, 64, "L", 2), (300, 200, "RGB", 3)):
        im = Image.fromarray(synthetic_image(h, w, mode, seed))
        assert torch.equal(preprocess(im), ours(im)), "open_clip's transform is not the documented Compose"
    with torch.inference_mode():
        emb = F.normalize(visual(x), dim=-1)  # CLIP.encode_image(normalize=True) = model(img, txt)[0]
        e2e = F.normalize(visual(preprocess(Image.fromarray(img))[None]), dim=-1)
    _save("biomedclip", layout, embedding=emb.numpy(), e2e_224=e2e.numpy())


# ---------------------------------------------------------------------------------------------- MedCLIP


def make_medclip() -> None:
    import medclip.modeling_medclip as mm
    from medclip.dataset import MedCLIPFeatureExtractor
    from PIL import Image
    from transformers import BertConfig, BertModel, SwinConfig, SwinModel

    def offline_auto_model(name, *args, **kwargs):  # the towers from their configs, no download
        if "swin" in name:
            return SwinModel(SwinConfig())
        return BertModel(BertConfig(vocab_size=28996), add_pooling_layer=True)

    mm.AutoModel.from_pretrained = staticmethod(offline_auto_model)
    mm.AutoTokenizer.from_pretrained = staticmethod(lambda *a, **k: None)
    torch.manual_seed(0)
    model = mm.MedCLIPModel(vision_cls=mm.MedCLIPVisionModelViT)
    template = model.state_dict()
    sd = seeded_state_dict(layout_of(template), keep=template)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(sd, Path(tmp) / "pytorch_model.bin")
        model.from_pretrained(input_dir=tmp)  # upstream's own strict load
    model.eval()
    _assert_all_loaded(model, sd)
    x = model_input((3, 1, 224, 224))
    extractor = MedCLIPFeatureExtractor()
    images = {
        "rgb28": synthetic_image(28, 28, "RGB", 1),
        "l64": synthetic_image(64, 64, "L", 2),
        "rgb30x40": synthetic_image(30, 40, "RGB", 5),
    }
    arrays = {}
    with torch.inference_mode():
        arrays["embedding"] = model.encode_image(x).numpy()
        for name, img in images.items():
            pixels = extractor(Image.fromarray(img), return_tensors="pt")["pixel_values"]
            arrays[f"pixels_{name}"] = pixels.numpy()
            arrays[f"e2e_{name}"] = model.encode_image(pixels).numpy()
    vision = {k: v for k, v in layout_of(template).items() if k.startswith("vision_model.")}
    _save("medclip", vision, **arrays)


# ------------------------------------------------------------- transformers Dinov2 / SigLIP (small towers)

DINOV2_CFG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    patch_size=14,
    image_size=56,
    layerscale_value=1.0,
    mlp_ratio=4,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    qkv_bias=True,
)
SIGLIP_CFG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    patch_size=14,
    image_size=56,
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
)


def _dinov2_v4_layout(c: dict) -> dict[str, dict]:
    """The transformers-4.x ``Dinov2Model`` names, as the hub's model.safetensors files store them."""
    d, n = c["hidden_size"], (c["image_size"] // c["patch_size"]) ** 2
    f = lambda *s: {"shape": list(s), "dtype": "float32"}  # noqa: E731
    out = {
        "embeddings.cls_token": f(1, 1, d),
        "embeddings.mask_token": f(1, d),
        "embeddings.position_embeddings": f(1, n + 1, d),
        "embeddings.patch_embeddings.projection.weight": f(d, 3, c["patch_size"], c["patch_size"]),
        "embeddings.patch_embeddings.projection.bias": f(d),
        "layernorm.weight": f(d),
        "layernorm.bias": f(d),
    }
    for i in range(c["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            out[p + f"attention.attention.{name}.weight"], out[p + f"attention.attention.{name}.bias"] = f(d, d), f(d)
        out.update(
            {
                p + "attention.output.dense.weight": f(d, d),
                p + "attention.output.dense.bias": f(d),
                p + "norm1.weight": f(d),
                p + "norm1.bias": f(d),
                p + "norm2.weight": f(d),
                p + "norm2.bias": f(d),
                p + "layer_scale1.lambda1": f(d),
                p + "layer_scale2.lambda1": f(d),
                p + "mlp.fc1.weight": f(4 * d, d),
                p + "mlp.fc1.bias": f(4 * d),
                p + "mlp.fc2.weight": f(d, 4 * d),
                p + "mlp.fc2.bias": f(d),
            }
        )
    return out


def make_hf() -> None:
    import transformers
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        layout = _dinov2_v4_layout(DINOV2_CFG)
        sd = seeded_state_dict(layout)
        Dinov2Config(**DINOV2_CFG).save_pretrained(tmp)
        save_file(sd, str(Path(tmp) / "model.safetensors"))
        model, info = Dinov2Model.from_pretrained(tmp, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        model.eval()
        with torch.inference_mode():
            out = model(pixel_values=model_input((2, 3, 56, 56)))
        arrays["dinov2_cls"] = out.last_hidden_state[:, 0].numpy()
        arrays["dinov2_pooler"] = out.pooler_output.numpy()
        (GOLDEN / "hf_dinov2_keys.json").write_text(json.dumps(layout, indent=0, sort_keys=True) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        SiglipVisionConfig(**SIGLIP_CFG).save_pretrained(tmp)
        template = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_CFG)).state_dict()
        # 4.x SiglipVisionModel and the full SiglipModel both store the tower under "vision_model."
        layout = {
            ("vision_model." + k if not k.startswith("vision_model.") else k): v for k, v in layout_of(template).items()
        }
        sd = seeded_state_dict(layout)
        save_file(sd, str(Path(tmp) / "model.safetensors"))
        model, info = SiglipVisionModel.from_pretrained(tmp, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        model.eval()
        with torch.inference_mode():
            arrays["siglip_pooled"] = model(pixel_values=model_input((2, 3, 56, 56))).pooler_output.numpy()
        (GOLDEN / "hf_siglip_keys.json").write_text(json.dumps(layout, indent=0, sort_keys=True) + "\n")
    arrays["dinov2_cfg"] = np.array(json.dumps(DINOV2_CFG))
    arrays["siglip_cfg"] = np.array(json.dumps(SIGLIP_CFG))
    print("transformers", transformers.__version__)
    _save("hf_vit", None, **arrays)


PARTS = {"conch": make_conch, "biomedclip": make_biomedclip, "medclip": make_medclip, "hf": make_hf}

if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for part in sys.argv[1:] or list(PARTS):
        PARTS[part]()
