"""Every YAML file under conf/ composes into something that runs (found by glob, not by a hand list).

Models build with random weights on the meta device (a ViT-g costs no memory or time there) and give their
declared width; datasets pass the cell's validation; experiments sweep only configs that exist; the other
groups compose with every value set. Bases (files starting with ``_``) are checked through the files that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from cbmir.layout import GENERIC_FAMILIES, SIZES_2D, config_names, model_id
from tests.helpers.config import CONF_DIR, compose_config

FILES = sorted(p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml"))

#: The generic entries need a model to stand for: tiny ones, with the width they give.
GENERIC_STAND_INS = {
    "timm": ["model.arch=test_resnet.r160_in1k", "model.dim=96"],
    "open_clip": ["model.arch=ViT-S-32", "model.dim=384"],
}


def check_model(name: str, cfg: DictConfig) -> None:
    from cbmir.models import build_backbone, families

    assert cfg.model.family in families()
    if cfg.model.family in GENERIC_FAMILIES and not cfg.model.get("arch"):
        cfg = compose_config([f"model={name}", *GENERIC_STAND_INS[cfg.model.family]])
        assert model_id(cfg).startswith(f"{cfg.model.family}-")  # named by its arch, not by the config file
    else:
        assert cfg.model.name == name, "model.name is the result folder: it must equal the file name"
    cfg.model.pretrained = False
    with torch.device("meta"):
        backbone = build_backbone(cfg.model)  # raises if the network's width differs from model.dim
        side = backbone.preprocess.input_size or 32
        out = backbone.net(torch.zeros(2, 3, side, side))  # the extractor always feeds 3 channels
    assert backbone.dim == cfg.model.dim and tuple(out.shape) == (2, cfg.model.dim)
    assert backbone.identity["weights"] == "random"


#: Primary configs at the top of conf/: a run (config.yaml) and a search index (index.yaml, the run's plus `index`).
PRIMARY = {"config.yaml": (), "index.yaml": ("index",)}


def check_dataset(name: str, cfg: DictConfig) -> None:
    from cbmir.cell.spec import build_spec
    from cbmir.errors import ConfigError

    if cfg.dataset.get("kind", "medmnist") != "medmnist":  # own data: the user names it and points at the files
        assert cfg.dataset.kind == name and cfg.dataset.name is None
        cfg.size = 32
        with pytest.raises(ConfigError, match="dataset.name"):
            build_spec(cfg)
        return
    assert cfg.dataset.name == name == cfg.dataset.flag
    for size in cfg.dataset.sizes:
        cfg.size = size
        build_spec(cfg)


def check_experiment(name: str, cfg: DictConfig) -> None:
    params = cfg.hydra.sweeper.params
    assert params, f"experiment {name} sweeps nothing"
    known = {"model": config_names("model", CONF_DIR), "dataset": config_names("dataset", CONF_DIR)}
    for key, value in params.items():
        values = [v.strip() for v in str(value).split(",")]
        if key in known:
            assert set(values) <= set(known[key]), f"{name} sweeps unknown {key}s {set(values) - set(known[key])}"
        elif key == "size":
            assert {int(v) for v in values} <= set(SIZES_2D)


def check_trainer(name: str, cfg: DictConfig) -> None:
    assert set(cfg.trainer) == {"accelerator", "devices", "strategy", "num_nodes"}
    assert cfg.trainer.accelerator in ("auto", "cpu", "gpu") and cfg.trainer.devices >= 1


def check_protocol(name: str, cfg: DictConfig) -> None:
    from cbmir.metrics.retrieval import TIE_RULES
    from cbmir.search.exact import METRICS

    assert cfg.protocol.name == name
    assert cfg.protocol.metric in METRICS and cfg.protocol.vote_ties in TIE_RULES


def check_logger(name: str, cfg: DictConfig) -> None:
    assert set(cfg.logger) <= {"csv", "wandb"}


def check_paths(name: str, cfg: DictConfig) -> None:
    assert cfg.paths.output_dir and cfg.paths.data_dir


def check_stats(name: str, cfg: DictConfig) -> None:
    from cbmir.stats.bootstrap import StatsSettings

    settings = StatsSettings.from_config(cfg.stats)  # raises ConfigError on a bad value
    assert 0 < settings.level < 1 and settings.resamples >= 1000


def check_search(name: str, cfg: DictConfig) -> None:
    from cbmir.search.approximate import search_spec

    spec = search_spec(cfg)  # raises ConfigError on a bad value; the default is exact search
    assert spec.exact and cfg.search.index == "Flat"


def check_launcher(name: str, cfg: DictConfig) -> None:
    launcher = cfg.hydra.launcher
    assert launcher._target_.startswith("hydra_plugins.cbmir_cluster"), launcher._target_
    assert launcher.mem_gb == 32 and launcher.timeout_min == 120  # resnet50 asks nothing: the defaults
    big = compose_config([f"hydra/launcher={name}", "model=dinov2_g"], hydra=True).hydra.launcher
    assert big.mem_gb == 64 and big.timeout_min == 480  # read from the model's resources


def check_prompts(name: str, cfg: DictConfig) -> None:
    from cbmir.cell.spec import build_spec
    from cbmir.cell.text import resolve_prompts

    assert cfg.prompts.templates is None and cfg.prompts.classnames is None  # the authors' and the dataset's
    conch = compose_config([f"prompts={name}", "model=conch", "dataset=pathmnist", "protocol=zeroshot"])
    spec = build_spec(conch)
    prompts = resolve_prompts(spec.model, spec.prompts, str(spec.protocol.kind), {"0": "adipose", "1": "mucus"}, 2)
    assert len(prompts.templates) == 22 and prompts.templates[-1] == "CLASSNAME, H&E."
    assert prompts.classnames == (("adipose",), ("mucus",))


#: One check per config group; a new group fails until it has one.
CHECKS: dict[str, Callable[[str, DictConfig], None]] = {
    "model": check_model,
    "dataset": check_dataset,
    "experiment": check_experiment,
    "trainer": check_trainer,
    "protocol": check_protocol,
    "logger": check_logger,
    "paths": check_paths,
    "stats": check_stats,
    "search": check_search,
    "prompts": check_prompts,
    "hydra/launcher": check_launcher,
}


def defaults_of(path: Path) -> list[str]:
    return [str(d) for d in OmegaConf.load(path).get("defaults", []) if isinstance(d, str)]


@pytest.mark.parametrize("file", FILES)
def test_every_config_file_composes(file: str):
    group, name = Path(file).parent.as_posix(), Path(file).stem
    if group == ".":
        assert file in PRIMARY, f"conf/{file}: only {sorted(PRIMARY)} belong at the top"
        cfg = compose_config([], config_name=name)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        assert set(cfg) == set(compose_config([])) | set(PRIMARY[file])
        return
    if name.startswith("_"):  # a base: composed through the files that use it
        users = [n for n in config_names(group, CONF_DIR) if name in defaults_of(CONF_DIR / group / f"{n}.yaml")]
        assert users, f"conf/{file} is a base that no {group} config uses"
        return
    assert group in CHECKS, f"conf/{group}/ has no check in tests/test_config.py"
    cfg = compose_config([f"{group}={name}"], hydra=group == "experiment" or group.startswith("hydra/"))
    job = {k: v for k, v in cfg.items() if k != "hydra"}
    OmegaConf.to_container(OmegaConf.create(job), resolve=True, throw_on_missing=True)  # no ??? left unset
    CHECKS[group](name, cfg)
