"""Cell identity without torch: ids, result folders, names, the study's grid and shared constants.

A cell is (protocol, dataset, size, model). Every module that names a cell or finds its
folder (the cell runner, loggers, report, bench) goes through this one module, so the
result contract has exactly one definition, and importing the report does not import torch.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

#: The config tree: ``CBMIR_CONF_DIR`` if set, else the ``conf/`` beside the package.
CONF_DIR = Path(os.environ.get("CBMIR_CONF_DIR") or Path(__file__).resolve().parent / "conf")

#: Source resolutions of MedMNIST+ (28 is MedMNIST v2); the 3D sets come at 28 and 64 only.
SIZES_2D: tuple[int, ...] = (28, 64, 128, 224)
SIZES_3D: tuple[int, ...] = (28, 64)

#: The ranking each named protocol uses; another metric makes a distinct protocol id (e.g. ``paper+cosine``).
CANONICAL_METRIC: dict[str, str] = {"paper": "l2", "standard": "cosine"}

#: Generic model entries named by their architecture when left unnamed (``timm-<arch>``, ``open_clip-<arch>-<tag>``).
GENERIC_FAMILIES: tuple[str, ...] = ("timm", "open_clip")

#: The stack whose versions each result records.
VERSIONED_PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "timm",
    "open_clip_torch",
    "lightning",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "numpy",
    "scipy",
    "pillow",
    "hydra-core",
)


def medmnist_file_name(flag: str, size: int) -> str:
    """MedMNIST's naming: ``{flag}.npz`` at 28 px, ``{flag}_{size}.npz`` above."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def safe_name(text: Any) -> str:
    """A filesystem-safe name: runs of anything but letters, digits, ``.``, ``_``, ``+``, ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_")


def _get(node: Any, key: str, default: Any = None) -> Any:
    return node.get(key, default) if isinstance(node, Mapping) or hasattr(node, "get") else default


def protocol_id(cfg: Any) -> str:
    """The protocol, ``+metric`` where not its canonical one, ``+exclude-group``, ``+<search_id>`` if approximate."""
    name, metric = cfg["protocol"]["name"], cfg["protocol"]["metric"]
    out = name if CANONICAL_METRIC.get(name, metric) == metric else f"{name}+{metric}"
    if _get(cfg["protocol"], "exclude_same_group", False):
        out += "+exclude-group"
    approximate = search_id(cfg)
    return f"{out}+{approximate}" if approximate else out


#: Training settings of ``conf/search/default.yaml``; another value is part of an approximate cell's id.
SEARCH_TRAINING_DEFAULTS: dict[str, Any] = {"train_size": 100_000, "seed": 0}


def search_id(cfg: Any) -> str | None:
    """``None`` for exact search (fp32 ``Flat``, no PCA); else every setting that changes the neighbours.

    ``IVF4096,PQ64`` with ``nprobe=16`` → ``ivf4096-pq64-nprobe16``; ``Flat`` + ``store.dtype=float16``
    + ``search.pca=128`` → ``flat-pca128-fp16``. Cells without a ``search`` node (older results) are exact.
    """
    s, store = _get(cfg, "search") or {}, _get(cfg, "store") or {}
    index, pca, dtype = str(_get(s, "index", "Flat")), _get(s, "pca"), str(_get(store, "dtype", "float32"))
    if index == "Flat" and pca is None and dtype == "float32":
        return None
    parts = [safe_name(index.lower().replace(",", "-"))]
    if _get(s, "nprobe") is not None and "IVF" in index:
        parts.append(f"nprobe{_get(s, 'nprobe')}")
    if _get(s, "efSearch") is not None and "HNSW" in index:
        parts.append(f"ef{_get(s, 'efSearch')}")
    if pca is not None:
        parts.append(f"pca{pca}")
    if dtype != "float32":
        parts.append("fp16" if dtype == "float16" else safe_name(dtype))
    for key, default in SEARCH_TRAINING_DEFAULTS.items():
        if _get(s, key, default) != default:
            parts.append(f"{key.replace('_', '')}{_get(s, key)}")
    return "-".join(parts)


def dataset_id(cfg: Any) -> str:
    """The dataset's name, plus the 3D options where they differ from the study's (e.g. ``synapsemnist3d+tri-mean``)."""
    d = cfg["dataset"]
    options = []
    if _get(d, "dims", 2) == 3:
        if _get(d, "planes", "axial") != "axial":
            options.append(d["planes"])
        if _get(d, "aggregate", "concat") != "concat":
            options.append(d["aggregate"])
    return str(d["name"]) + ("+" + "-".join(options) if options else "")


def model_id(cfg: Any) -> str:
    """The model's name; a generic entry (``model=timm``/``model=open_clip``) left unnamed is named by its arch."""
    m = cfg["model"]
    family = _get(m, "family")
    if family in GENERIC_FAMILIES and m["name"] == family and _get(m, "arch"):
        parts = [family, safe_name(str(m["arch"]).removeprefix("hf-hub:"))]
        if _get(m, "tag"):
            parts.append(safe_name(str(m["tag"]).removeprefix("hf-hub:")))
        return "-".join(parts)
    return str(m["name"])


def cell_name(cfg: Any) -> str:
    return f"{protocol_id(cfg)}/{dataset_id(cfg)}/{cfg['size']}/{model_id(cfg)}"


def cell_dir(cfg: Any) -> Path:
    """``<output_dir>/results/<protocol>/<dataset>/<size>/<model>/``: the result contract's folder."""
    return result_root(cfg) / protocol_id(cfg) / dataset_id(cfg) / str(cfg["size"]) / model_id(cfg)


def result_root(cfg: Any) -> Path:
    return Path(str(cfg["paths"]["output_dir"])) / "results"


def versions() -> dict[str, str]:
    """cbmir, Python and the installed stack, read from package metadata (imports nothing heavy)."""
    from cbmir import __version__

    out = {"cbmir": __version__, "python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


@cache
def _yaml(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def config_names(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group (``model``, ``dataset``, …); files starting with ``_`` are bases."""
    return sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml") if not p.stem.startswith("_"))


def label(group: str, name: str, conf_dir: Path = CONF_DIR) -> str:
    """The human name of a model or dataset (its YAML's ``label``, as the paper writes it), else the id."""
    path = Path(conf_dir) / group / f"{name}.yaml"
    if not path.is_file():
        return name
    return str(_yaml(path).get("label") or name)


def paper_grid(conf_dir: Path = CONF_DIR) -> dict[str, list]:
    """The study's grid, as ``conf/experiment/paper.yaml`` sweeps it: models, datasets and sizes, in order."""
    params = _yaml(Path(conf_dir) / "experiment" / "paper.yaml")["hydra"]["sweeper"]["params"]

    def split(value: Any) -> list[str]:
        return [v.strip() for v in str(value).split(",") if v.strip()]

    return {
        "model": split(params["model"]),
        "dataset": split(params["dataset"]),
        "size": [int(s) for s in split(params["size"])],
    }
