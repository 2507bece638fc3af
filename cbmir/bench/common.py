"""What every comparison shares: statistics, device timing, synthetic MedMNIST-format data, configs, the backbone."""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbmir.layout import CONF_DIR, config_names

# ------------------------------------------------------------------------------------------------ statistics, timing


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def gb(n_bytes: float) -> float:
    return float(n_bytes) / 1e9


def sync(device: torch.device) -> None:
    """Wait for the device: a CUDA timing without it measures the kernel launches only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """The autocast a Lightning precision string means, for code that runs outside Lightning."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Silence Lightning's banners, progress bars and warnings (they still run: their cost is measured)."""
    if not enabled:
        yield
        return
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "cbmir")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


# ------------------------------------------------------------------------------------------------------- synthetic data


def write_medmnist_npz(path: Path, splits: dict[str, tuple[int, ...]], *, seed: int = 0, n_classes: int = 9) -> Path:
    """A MedMNIST-format ``.npz`` of random uint8 images, streamed chunk by chunk (never whole in memory)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for split, shape in splits.items():
            n, item = shape[0], int(np.prod(shape[1:]))
            with zf.open(f"{split}_images.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
                )
                per = max(1, (64 << 20) // item)
                for start in range(0, n, per):
                    fh.write(rng.bytes(min(per, n - start) * item))
            with zf.open(f"{split}_labels.npy", "w") as fh:
                np.lib.format.write_array(fh, (np.arange(n) % n_classes).astype(np.uint8).reshape(-1, 1))
    return path


def synthetic_split(root: Path, flag: str, size: int, shape: tuple[int, ...], n: int, *, seed: int = 0):
    """Write ``n`` images of ``shape`` as ``{flag}[_{size}].npz`` and map its train split the way cells do."""
    from cbmir.data import file_name, load_split, split_arrays

    npz = write_medmnist_npz(
        root / file_name(flag, size), {"train": (n, *shape), "val": (2, *shape), "test": (2, *shape)}, seed=seed
    )
    folder = split_arrays(npz)
    npz.unlink()  # the .npy files are what the run maps
    return folder, load_split(folder, flag, size, "train")


def subset(split, n: int):
    """The first ``n`` items of a split (still memory-mapped)."""
    from cbmir.data import Split

    return Split(split.flag, split.size, split.split, split.images[:n], split.labels[:n])


# ---------------------------------------------------------------------------------------------------- configs, models


def compose(conf_dir: Path, overrides: list[str]):
    """The cell config conf/config.yaml gives with these overrides (as ``python -m cbmir.run`` would)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def model_overrides(model: str, conf_dir: Path, *, pretrained: bool, extra: list[str]) -> list[str]:
    """Hydra overrides for a conf/model name or ``timm=<arch>`` (named ``timm-<arch>`` by cbmir.layout.model_id)."""
    if model.startswith("timm="):
        base = ["model=timm", f"model.arch={model.split('=', 1)[1]}"]
    else:
        known = config_names("model", conf_dir)
        if model not in known:
            raise SystemExit(f"--model {model!r} is neither a conf/model name ({', '.join(known)}) nor timm=<arch>")
        base = [f"model={model}"]
    return base + [f"++model.pretrained={'true' if pretrained else 'false'}", *extra]


def cell_overrides(env: Env, model: str, data_dir: Path, output_dir: Path, batch: int) -> list[str]:
    """A pathmnist-28 cell of ``model`` on a synthetic file in ``data_dir``, on the bench's device and precision."""
    return model_overrides(model, env.conf_dir, pretrained=env.pretrained, extra=env.overrides) + [
        "dataset=pathmnist",
        "size=28",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={output_dir}",
        "dataset.verify_md5=false",
        "dataset.download=false",
        "logger=none",
        f"trainer={env.accelerator}",
        f"batch_size={batch}",
        f"num_workers={env.workers}",
        f"precision={env.precision}",
        "overwrite=true",
    ]


@dataclass
class Env:
    """Device, precision, loader workers, model options and a scratch folder shared by every measurement."""

    device: torch.device
    precision: str
    workers: int
    work: Path
    conf_dir: Path = CONF_DIR
    pretrained: bool = False
    overrides: list[str] = field(default_factory=list)
    verbose: bool = False
    counter: int = 0

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device.type == "cuda" else "cpu"

    def trainer(self):
        """The placement ``build_trainer`` reads: one device of this bench's kind."""
        from cbmir.cell.spec import TrainerSpec

        return TrainerSpec(accelerator=self.accelerator, devices=1, strategy="auto", num_nodes=1)

    def scratch(self, stem: str) -> Path:
        self.counter += 1
        return self.work / f"{stem}_{self.counter}.npy"

    def params(self) -> dict[str, Any]:
        """JSON-able fields (the memory child rebuilds the Env from them, with its own scratch folder)."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "workers": self.workers,
            "conf_dir": str(self.conf_dir),
            "pretrained": self.pretrained,
            "overrides": list(self.overrides),
            "verbose": self.verbose,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any], work: Path) -> Env:
        return cls(
            **{**params, "device": torch.device(params["device"]), "conf_dir": Path(params["conf_dir"])}, work=work
        )


def build(env: Env, model: str, extra: list[str] | None = None):
    """The backbone of a conf/model (random weights unless pretrained), and the composed config."""
    import lightning as L

    from cbmir.models import build_backbone

    cfg = compose(
        env.conf_dir,
        model_overrides(model, env.conf_dir, pretrained=env.pretrained, extra=[*env.overrides, *(extra or [])]),
    )
    L.seed_everything(0, verbose=False)
    with quiet(not env.verbose):
        backbone = build_backbone(cfg.model)
    return backbone, cfg
