"""The config tree and command lines of the tests: paths, tiny-model overrides, composition, ``python -m cbmir.run``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "cbmir" / "conf"
#: Reference embeddings and checkpoint layouts of the upstream implementations (scripts/make_golden.py).
GOLDEN = ROOT / "tests" / "golden"
#: timm's 0.4 M-parameter test ResNet (96-d): real CNN code paths at a fraction of the cost.
TINY_CNN = ["model.arch=test_resnet.r160_in1k", "model.dim=96", "model.name=tiny_resnet"]
#: The 2x2 sweep through Hydra's basic launcher that several slow tests read (run once per session).
SWEEP_2X2 = ["dataset=breastmnist,bloodmnist", "size=28,64"]


def compose_config(overrides: list[str], *, hydra: bool = False, config_name: str = "config"):
    """The real config tree composed with ``overrides``, as the command line would (``hydra``: with ``cfg.hydra``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra)


def model_cfg(name: str, /, **over: Any):
    """``conf/model/<name>.yaml`` as ``model=<name>`` composes it (bases included), with ``over`` merged in."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(compose_config([f"model={name}"]).model, resolve=True)
    return OmegaConf.merge(OmegaConf.create(node), over)


def base_overrides(data_dir: Path, out_dir: Path, *, tiny: bool = True) -> list[str]:
    return [
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out_dir}",
        "dataset.verify_md5=false",
        "dataset.download=false",
        "model.pretrained=false",
        "num_workers=0",
        "batch_size=8",
        "logger=csv",
        *(TINY_CNN if tiny else []),
    ]


def run_cli(
    *args: str,
    cwd: Path | None = None,
    launcher: list[str] | None = None,
    timeout: int = 300,
    env: dict[str, str] | None = None,
):
    """``python -m cbmir.run ARGS`` (or under ``launcher``, e.g. torchrun) in a fresh, offline process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = (launcher or [sys.executable]) + ["-m", "cbmir.run", *args]
    return subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)
