"""Benchmark harness: cbmir's extraction, 3D, search and cache paths against the conventional ways.

    python -m cbmir.bench                     # the default settings (a full run: minutes)
    python -m cbmir.bench --quick             # tiny sizes, one repeat, the same JSON keys (seconds)
    python -m cbmir.bench --model resnet50 --source-size 28 --input-size 32 224
    python -m cbmir.bench --setting resnet50,28,32 --setting timm=vit_base_patch16_224,64,224,16

A setting is ``MODEL,SOURCE,INPUT[,BATCH]``: ``MODEL`` a ``conf/model`` name or ``timm=<arch>``, ``SOURCE``
the synthetic images' side, ``INPUT`` the network's input side (``auto``: the model's own preprocessing;
cbmir's CNNs run at the source size, raised to the protocol's 32 px). Weights are random unless
``--pretrained`` (speed does not depend on them, and random weights need no network).

Figures (each a median over ``--repeats`` timed runs after ``--warmup`` untimed ones; the methods
of a setting are interleaved run by run, so load from other processes hits them alike):

1. pipeline: ``Trainer.predict`` with the real ``EmbeddingModule``, ``make_loader``'s DataLoader over a
   memory-mapped MedMNIST-format split (``split_arrays`` + ``load_split``) and the ``EmbeddingWriter``,
   timed from building the trainer to the merged ``.npy``;
2. model: the backbone's forward alone on tensors already on the device, of the preprocessed shape, same
   batch size and precision; ``pipeline_efficiency`` = 1 / 2;
3. conventional: a PIL image per item, torchvision ``Compose([Resize, (CenterCrop,) ToTensor, Normalize])``
   in a torch Dataset, default collate, then the forward (the study's scripts); speedup = 1 / 3;
4. 3D: batched slices (``EmbeddingModule`` + ``VolumeSpec``, through the pipeline) vs one slice per forward;
5. search: ``cbmir.search.search`` (FAISS) vs the per-query loop ``np.linalg.norm(db - q, axis=1)`` + argsort
   (the loop is timed on a subset of the queries and scaled linearly: its cost is exactly per query);
6. cache: ``run_cell`` cold vs again with ``overwrite=true`` and its embeddings cached;
7. memory: peak RSS of a pipeline run over a large memory-mapped 224-px split, in a fresh process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: The study's settings: ResNet-50 at the size-28 cells (28 → 32) and at 224 from 28-px sources, a ViT-B/16 at 224.
DEFAULT_SETTINGS = (
    "resnet50,28,32",
    "resnet50,28,224",
    "timm=vit_base_patch16_224,28,224",
    "timm=vit_base_patch16_224,64,224",
)
TARGETS = {
    "pipeline_efficiency": 0.90,
    "speedup_vs_conventional": 1.0,
    "speedup_3d_batched": 5.0,
    "speedup_search": 30.0,
}
PATHMNIST = {"database": 89_996, "query": 7_180, "dim": 2048}
RSS_MARK = "CBMIR_RSS_RESULT "


# ----------------------------------------------------------------------------------------------------------- utils


@dataclass(frozen=True)
class Setting:
    model: str  # conf/model name or timm=<arch>
    source: int
    input: int | None  # None: the model's own preprocessing
    batch: int | None = None

    @property
    def label(self) -> str:
        name = self.model.split("=", 1)[1] if self.model.startswith("timm=") else self.model
        return f"{name} {self.source}->{self.input or 'auto'}"


def parse_setting(text: str) -> Setting:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"a setting is MODEL,SOURCE,INPUT[,BATCH], got {text!r}")
    try:
        source = int(parts[1])
        inp = None if parts[2] in ("auto", "") else int(parts[2])
        batch = int(parts[3]) if len(parts) == 4 and parts[3] else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"SOURCE, INPUT and BATCH must be integers (INPUT may be auto): {text!r}"
        ) from None
    return Setting(parts[0], source, inp, batch)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> list[float]:
    return [float(min(xs)), float(max(xs))]


def gb(n_bytes: float) -> float:
    return float(n_bytes) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
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


def compose(conf_dir: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def model_overrides(model: str, conf_dir: Path, *, pretrained: bool, extra: list[str]) -> list[str]:
    if model.startswith("timm="):
        arch = model.split("=", 1)[1]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in arch)
        base = ["model=timm", f"model.arch={arch}", f"model.name={safe}"]
    else:
        if not (conf_dir / "model" / f"{model}.yaml").exists():
            known = sorted(p.stem for p in (conf_dir / "model").glob("*.yaml"))
            raise SystemExit(f"--model {model!r} is neither a conf/model name ({', '.join(known)}) nor timm=<arch>")
        base = [f"model={model}"]
    return base + [f"++model.pretrained={'true' if pretrained else 'false'}", *extra]


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
    from cbmir.data import Split

    return Split(split.flag, split.size, split.split, split.images[:n], split.labels[:n])


def loop_cfg(*, accelerator: str, precision: str, batch: int, workers: int):
    """The slice of a cell config that ``build_trainer``, ``make_loader`` and ``resolve_precision`` read."""
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "trainer": {"accelerator": accelerator, "devices": 1, "strategy": "auto", "num_nodes": 1},
            "precision": precision,
            "batch_size": batch,
            "num_workers": workers,
        }
    )


def net_crop(net: nn.Module) -> int | None:
    from cbmir.models.common import CenterCrop

    if isinstance(net, nn.Sequential) and len(net) and isinstance(net[0], CenterCrop):
        return net[0].size
    return None


# -------------------------------------------------------------------------------------------------- measurements


class Env:
    """Device, precision, loader settings and a scratch folder shared by every measurement."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.device = torch.device(args.device)
        self.accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        self.precision = args.precision
        self.workers = args.num_workers
        self.counter = 0

    def cfg(self, batch: int):
        return loop_cfg(accelerator=self.accelerator, precision=self.precision, batch=batch, workers=self.workers)

    def scratch(self, stem: str) -> Path:
        self.counter += 1
        return self.work / f"{stem}_{self.counter}.npy"


class BatchClock(Callback):
    """Wall-clock time at the end of every predict batch (after the writer's): the steady-state rate."""

    def __init__(self):
        self.ends: list[float] = []

    def on_predict_batch_end(self, *args, **kwargs) -> None:
        self.ends.append(time.perf_counter())


def pipeline_run(
    env: Env,
    backbone,
    split,
    *,
    batch: int,
    min_source: int | None,
    volume=None,
    max_forward_batch: int = 512,
    dim: int | None = None,
    keep: bool = False,
):
    """cbmir's extraction of ``split`` end to end: trainer, loader, EmbeddingModule, writer, merge.

    Returns ``(seconds, steady images/s, embeddings or None)``; the steady rate counts batches 2..N only
    (no loader start, no first batch, no teardown or merge), ``nan`` with a single batch.
    """
    from cbmir.cell import build_trainer, make_loader
    from cbmir.extract import EmbeddingModule
    from cbmir.store import EmbeddingWriter

    cfg = env.cfg(batch)
    target = env.scratch("pipeline")
    dim = dim or backbone.dim
    clock = BatchClock()
    with quiet(not env.args.verbose):
        sync(env.device)
        t0 = time.perf_counter()
        writer = EmbeddingWriter([target], [len(split)], dim)
        trainer = build_trainer(cfg, [writer, clock], env.work)
        module = EmbeddingModule(
            backbone, min_source_size=min_source, volume=volume, max_forward_batch=max_forward_batch
        )
        trainer.predict(module, dataloaders=[make_loader(split, cfg)], return_predictions=False)
        sync(env.device)
        seconds = time.perf_counter() - t0
    emb = np.load(target, allow_pickle=False)
    target.unlink()
    if emb.shape != (len(split), dim) or not np.isfinite(emb).all():
        raise RuntimeError(
            f"pipeline wrote {emb.shape} (finite: {np.isfinite(emb).all()}), expected ({len(split)}, {dim})"
        )
    steady = float("nan")
    if len(clock.ends) >= 2:
        steady = (len(split) - min(batch, len(split))) / (clock.ends[-1] - clock.ends[0])
    return seconds, steady, (emb if keep else None)


def backbone_input(backbone, images: torch.Tensor, *, min_source: int | None, device: torch.device) -> torch.Tensor:
    """Exactly the tensor EmbeddingModule hands the backbone for ``images`` (values, shape, dtype and memory format)."""
    from cbmir.extract import EmbeddingModule

    captured = {}

    def hook(_module, inputs):
        captured["x"] = inputs[0].clone(memory_format=torch.preserve_format)

    module = EmbeddingModule(backbone, min_source_size=min_source).to(device).eval()
    handle = backbone.net.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            module.embed_images(images.to(device))
    finally:
        handle.remove()
    return captured["x"]


def memory_format(x: torch.Tensor) -> str:
    if x.is_contiguous():
        return "contiguous"
    return "channels_last" if x.is_contiguous(memory_format=torch.channels_last) else "strided"


def model_run(env: Env, net: nn.Module, x: torch.Tensor, *, n_batches: int) -> float:
    """The backbone's forward alone on a batch already on the device, ``n_batches`` times."""
    net.to(env.device).eval()
    with torch.inference_mode(), autocast(env.device, env.precision):
        sync(env.device)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            net(x).float()
        sync(env.device)
        return time.perf_counter() - t0


class PILDataset(torch.utils.data.Dataset):
    """The conventional dataset: one PIL image per item, then the torchvision transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(np.asarray(self.images[i])).convert("RGB")
        return self.transform(img), torch.as_tensor(self.labels[i])


def conventional_transform(spec, *, source: int, min_source: int | None, crop: int | None):
    """torchvision's ``Compose`` equivalent of ``spec`` (what the study's scripts ran per image)."""
    from torchvision import transforms as T

    mode = {
        "bilinear": T.InterpolationMode.BILINEAR,
        "bicubic": T.InterpolationMode.BICUBIC,
        "nearest": T.InterpolationMode.NEAREST,
    }[spec.interpolation]
    bilinear = T.InterpolationMode.BILINEAR
    # the protocol's source upsampling first (the study: 28 -> 32, bilinear), as cbmir's preprocess does
    steps = [T.Resize((min_source, min_source), interpolation=bilinear)] if min_source and source < min_source else []
    if spec.input_size is None:  # CNN at the source size, never below spec.min_size
        side = max(source, min_source or 0, spec.min_size)
        steps = [T.Resize((side, side), interpolation=bilinear if steps or source >= spec.min_size else mode)]
    elif spec.resize == "resize_crop":
        steps += [T.Resize(spec.input_size, interpolation=mode), T.CenterCrop(spec.input_size)]
    else:  # resize (pad is rare and approximated by a square resize)
        steps += [T.Resize((spec.input_size, spec.input_size), interpolation=mode)]
    if crop:
        steps.append(T.CenterCrop(crop))
    if spec.grayscale:
        steps.append(T.Grayscale(num_output_channels=3))
    mean = spec.mean * 3 if len(spec.mean) == 1 else spec.mean
    std = spec.std * 3 if len(spec.std) == 1 else spec.std
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def conventional_run(env: Env, net: nn.Module, split, transform, *, batch: int, keep: bool = False):
    """PIL per item + torchvision transforms + default collate + forward; embeddings saved at the end."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        PILDataset(split.images, split.labels, transform),
        batch_size=batch,
        shuffle=False,
        num_workers=env.workers,
        pin_memory=torch.cuda.is_available(),
    )
    net.to(env.device).eval()
    target = env.scratch("conventional")
    sync(env.device)
    t0 = time.perf_counter()
    feats = []
    with torch.inference_mode(), autocast(env.device, env.precision):
        for x, _y in loader:
            feats.append(net(x.to(env.device, non_blocking=True)).float().cpu().numpy())
    emb = np.concatenate(feats)
    np.save(target, emb)
    seconds = time.perf_counter() - t0
    target.unlink()
    return seconds, (emb if keep else None)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(1).min())


def build(env: Env, model: str, extra: list[str] | None = None):
    """The backbone of a conf/model (random weights unless --pretrained), and the composed config."""
    import lightning as L

    from cbmir.models import build_backbone

    cfg = compose(
        env.args.conf_dir,
        model_overrides(
            model, env.args.conf_dir, pretrained=env.args.pretrained, extra=list(env.args.override) + list(extra or [])
        ),
    )
    L.seed_everything(0, verbose=False)
    with quiet(not env.args.verbose):
        backbone = build_backbone(cfg.model)
    return backbone, cfg


def bench_setting(env: Env, setting: Setting, log: Callable[[str], None]) -> dict[str, Any]:
    import shutil

    args = env.args
    backbone, cfg = build(env, setting.model)
    min_source = cfg.protocol.min_source_size
    spec = backbone.preprocess
    crop = net_crop(backbone.net)
    natural = spec.input_size or max(setting.source, min_source or 0, spec.min_size)
    net_input = crop or natural
    if setting.input is not None and setting.input not in (natural, net_input):
        if spec.input_size is not None:
            raise SystemExit(f"{setting.model} takes {net_input}-px input; input {setting.input} does not fit it")
        # a CNN made to run at a foundation model's size: square resize of the source, the model's interpolation
        spec = replace(spec, input_size=setting.input, resize="resize")
        natural = net_input = setting.input
    backbone.preprocess = spec
    batch = setting.batch or args.batch_size or default_batch(env, net_input)
    net = backbone.net
    gen = torch.Generator().manual_seed(0)
    sample = torch.randint(0, 256, (batch, setting.source, setting.source, 3), dtype=torch.uint8, generator=gen)
    # the model-only figure runs on exactly what the pipeline feeds the backbone (incl. its memory format)
    x = backbone_input(backbone, sample, min_source=min_source, device=env.device)
    shape = tuple(x.shape[1:])

    # probe the forward's cost to size the timed runs
    t_batch = min(model_run(env, net, x, n_batches=1) for _ in range(max(1, args.warmup) + 1))
    n_batches = args.batches or max(2, min(args.max_batches, math.ceil(args.seconds / max(t_batch, 1e-6))))
    n = n_batches * batch
    log(
        f"  {setting.label}: batch {batch}, {n_batches} batches ({n} images) per run, backbone input {shape} "
        f"{memory_format(x)}, ~{t_batch:.2f} s/batch forward"
    )
    folder, split = synthetic_split(
        env.work / f"data_{env.counter}", "pathmnist", setting.source, (setting.source, setting.source, 3), n, seed=1
    )
    transform = conventional_transform(spec, source=setting.source, min_source=min_source, crop=crop)

    one = subset(split, batch)
    for _ in range(args.warmup):
        pipeline_run(env, backbone, one, batch=batch, min_source=min_source)
        conventional_run(env, net, one, transform, batch=batch)
    times: dict[str, list[float]] = {"pipeline": [], "model": [], "conventional": []}
    steady: list[float] = []
    agreement, alt_ips = None, None
    for r in range(args.repeats):
        keep = r == 0
        t, st, emb_p = pipeline_run(env, backbone, split, batch=batch, min_source=min_source, keep=keep)
        times["pipeline"].append(t)
        steady.append(st)
        times["model"].append(model_run(env, net, x, n_batches=n_batches))
        t, emb_c = conventional_run(env, net, split, transform, batch=batch, keep=keep)
        times["conventional"].append(t)
        if keep:
            agreement = cosine_rows(emb_p, emb_c)
            # for information: the same forward in the other memory layout (NCHW <-> channels_last)
            alt = x.contiguous() if not x.is_contiguous() else x.contiguous(memory_format=torch.channels_last)
            alt_ips = n / model_run(env, net, alt, n_batches=n_batches)
    ips = {k: [n / t for t in v] for k, v in times.items()}
    eff = [p / m for p, m in zip(ips["pipeline"], ips["model"])]
    spd = [p / c for p, c in zip(ips["pipeline"], ips["conventional"])]
    del split
    shutil.rmtree(folder.parent, ignore_errors=True)
    steady_ok = [v for v in steady if math.isfinite(v)]
    return {
        "setting": setting.label,
        "model": setting.model,
        "arch": str(cfg.model.get("arch")),
        "source_size": setting.source,
        "input_size": net_input,
        "preprocessed_shape": list(shape),
        "backbone_input_memory_format": memory_format(x),
        "preprocess": spec.as_dict(),
        "min_source_size": min_source,
        "batch_size": batch,
        "images_per_run": n,
        "images_per_s": {k: median(v) for k, v in ips.items()},
        "images_per_s_spread": {k: spread(v) for k, v in ips.items()},
        "pipeline_efficiency": median(ips["pipeline"]) / median(ips["model"]),
        "pipeline_efficiency_per_repeat": eff,
        "pipeline_steady_images_per_s": median(steady_ok) if steady_ok else float("nan"),
        "pipeline_efficiency_steady": (median(steady_ok) / median(ips["model"])) if steady_ok else float("nan"),
        "pipeline_fixed_s": (median(times["pipeline"]) - n / median(steady_ok)) if steady_ok else float("nan"),
        "model_other_layout_images_per_s": alt_ips,
        "speedup_vs_conventional": median(ips["pipeline"]) / median(ips["conventional"]),
        "speedup_vs_conventional_per_repeat": spd,
        "min_cosine_pipeline_vs_conventional": agreement,
        "seconds": times,
    }


def default_batch(env: Env, net_input: int) -> int:
    if env.device.type == "cpu" and net_input > 64:
        return min(16, env.args.config_batch_size)  # 224-px forwards take seconds per batch on CPU: keeps the run short
    return env.args.config_batch_size


def bench_3d(env: Env, setting: Setting, log: Callable[[str], None]) -> dict[str, Any]:
    """Batched slices through the pipeline vs one slice per forward pass, on the same resampled volumes."""
    from cbmir.data import Split, load_split, resized_volumes, split_arrays
    from cbmir.extract import EmbeddingModule, VolumeSpec

    args = env.args
    backbone, cfg = build(env, setting.model)
    depth = 28
    side = max(depth, cfg.protocol.min_source_size or 0)  # the cell's volume_side: 28 -> 32
    n_vol = args.volumes
    npz = write_medmnist_npz(
        env.work / "vol" / "organmnist3d.npz",
        {"train": (n_vol, depth, depth, depth), "val": (1, depth, depth, depth), "test": (1, depth, depth, depth)},
        seed=2,
    )
    folder = split_arrays(npz)
    loaded = load_split(folder, "organmnist3d", depth, "train")
    split = Split("organmnist3d", depth, "train", resized_volumes(folder, "train", loaded.images, side), loaded.labels)
    volume = VolumeSpec()
    dim = volume.embedding_dim(backbone.dim, side)
    vol_batch = max(1, min(n_vol, args.batch_size or args.config_batch_size))  # volumes per loader batch, as a cell
    m_vol = max(1, min(n_vol, args.slice_volumes))
    log(
        f"  3D: {n_vol} volumes of {side}^3 ({n_vol * side} slices), {vol_batch} volumes per batch, at most "
        f"{args.max_forward_batch} slices per forward; one slice per forward timed on {m_vol} volumes and scaled to {n_vol}"
    )

    module = EmbeddingModule(backbone, min_source_size=None).to(env.device).eval()

    def per_slice(count: int) -> tuple[float, np.ndarray]:
        """The study's way: every slice of every volume through its own forward pass."""
        out = []
        sync(env.device)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(env.device, env.precision):
            for v in range(count):
                vol = torch.from_numpy(np.array(split.images[v])).to(env.device)
                out.append(
                    torch.cat([module.embed_images(vol[s : s + 1]) for s in range(vol.shape[0])]).reshape(-1).cpu()
                )
        sync(env.device)
        return time.perf_counter() - t0, torch.stack(out).numpy()

    def batched(keep=False):
        return pipeline_run(
            env,
            backbone,
            split,
            batch=vol_batch,
            min_source=None,
            volume=volume,
            max_forward_batch=args.max_forward_batch,
            dim=dim,
            keep=keep,
        )

    for _ in range(args.warmup):
        batched()
        module.to(env.device)
        per_slice(1)
    tb, ts, diff = [], [], None
    for r in range(args.repeats):
        t, _steady, emb_b = batched(keep=r == 0)
        tb.append(t)
        module.to(env.device)  # Lightning's teardown moved the shared backbone back to the CPU
        t, emb_s = per_slice(m_vol)
        ts.append(t * n_vol / m_vol)  # exactly linear: one forward per slice
        if r == 0:
            diff = float(np.abs(emb_b[:m_vol] - emb_s).max() / max(np.abs(emb_s).max(), 1e-12))
    speed = [s / b for b, s in zip(tb, ts)]
    return {
        "model": setting.model,
        "volumes": n_vol,
        "side": side,
        "slices": n_vol * side,
        "volumes_per_batch": vol_batch,
        "max_forward_batch": args.max_forward_batch,
        "per_slice_volumes_timed": m_vol,
        "seconds_batched": tb,
        "seconds_per_slice_scaled": ts,
        "slices_per_s": {"batched": n_vol * side / median(tb), "one_slice_per_forward": n_vol * side / median(ts)},
        "speedup_3d_batched": median(ts) / median(tb),
        "speedup_per_repeat": speed,
        "max_rel_diff_batched_vs_per_slice": diff,
    }


def bench_search(env: Env, log: Callable[[str], None]) -> dict[str, Any]:
    """FAISS through cbmir.search.search vs the study's per-query loop (norm + argsort), same data, k=5."""
    from cbmir.search import search

    args = env.args
    n_db, n_q, d = args.search_shape
    m = min(n_q, args.loop_queries)
    k = 5
    rng = np.random.default_rng(3)
    db = np.abs(rng.standard_normal((n_db, d), dtype=np.float32))  # GAP features of ReLU nets are non-negative
    q = np.abs(rng.standard_normal((n_q, d), dtype=np.float32))
    scaled = (n_db, n_q, d) != (PATHMNIST["database"], PATHMNIST["query"], PATHMNIST["dim"])
    log(
        f"  search: {n_db} x {n_q} x {d}{' (scaled down from PathMNIST 89,996 x 7,180 x 2,048)' if scaled else ''}; "
        f"the loop is timed on {m} queries and scaled to {n_q}"
    )

    def loop(qs):
        out = np.empty((len(qs), k), dtype=np.int64)
        t0 = time.perf_counter()
        for i, qi in enumerate(qs):
            dist = np.linalg.norm(db - qi, axis=1)
            out[i] = np.argsort(dist)[:k]
        return time.perf_counter() - t0, out

    for _ in range(args.warmup):
        search(db, q[: min(n_q, 64)], k, "l2")
        loop(q[:2])
    tf, tl, agree = [], [], None
    for r in range(args.repeats):
        t0 = time.perf_counter()
        _dist, idx = search(db, q, k, "l2")
        tf.append(time.perf_counter() - t0)
        t, ref = loop(q[:m])
        tl.append(t * n_q / m)
        if r == 0:
            agree = float((idx[:m, 0] == ref[:, 0]).mean())
    return {
        "database": n_db,
        "queries": n_q,
        "dim": d,
        "k": k,
        "scaled_down": scaled,
        "loop_queries_timed": m,
        "seconds_faiss": tf,
        "seconds_loop_extrapolated": tl,
        "queries_per_s": {"faiss": n_q / median(tf), "loop": n_q / median(tl)},
        "speedup_search": median(tl) / median(tf),
        "speedup_per_repeat": [b / a for a, b in zip(tf, tl)],
        "top1_agreement": agree,
        "pathmnist_loop_estimate_s": median(tl) / (n_db * n_q) * PATHMNIST["database"] * PATHMNIST["query"],
        "pathmnist_faiss_estimate_s": median(tf) / (n_db * n_q) * PATHMNIST["database"] * PATHMNIST["query"],
    }


def bench_cache(env: Env, setting: Setting, log: Callable[[str], None]) -> dict[str, Any]:
    """A whole cell (run_cell) cold, then again with overwrite=true: its embeddings come from the cache."""
    from cbmir.cell import run_cell

    args = env.args
    n_db, n_q = args.cache_images
    data_dir = env.work / "cache_data"
    write_medmnist_npz(
        data_dir / "pathmnist.npz",
        {"train": (n_db, 28, 28, 3), "val": (4, 28, 28, 3), "test": (n_q, 28, 28, 3)},
        seed=4,
    )
    log(f"  cache: run_cell on a {n_db} + {n_q}-image pathmnist-28 file, cold then cached")
    batch = setting.batch or args.batch_size or args.config_batch_size
    tc, tw = [], []
    for r in range(args.warmup + args.repeats):
        out = env.work / f"cache_out_{r}"
        overrides = model_overrides(
            setting.model, args.conf_dir, pretrained=args.pretrained, extra=list(args.override)
        ) + [
            "dataset=pathmnist",
            "size=28",
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={out}",
            "dataset.verify_md5=false",
            "dataset.download=false",
            "logger=none",
            f"trainer={'gpu' if env.accelerator == 'gpu' else 'cpu'}",
            f"batch_size={batch}",
            f"num_workers={env.workers}",
            f"precision={env.precision}",
            "overwrite=true",
        ]
        cfg = compose(args.conf_dir, overrides)
        with quiet(not args.verbose):
            t0 = time.perf_counter()
            cold = run_cell(cfg)
            t1 = time.perf_counter()
            warm = run_cell(cfg)
            t2 = time.perf_counter()
        if cold["cached"] != {"database": False, "query": False} or warm["cached"] != {"database": True, "query": True}:
            raise RuntimeError(
                f"cache bench: expected a cold then a cached cell, got {cold['cached']} / {warm['cached']}"
            )
        if r >= args.warmup:
            tc.append(t1 - t0)
            tw.append(t2 - t1)
    return {
        "model": setting.model,
        "database": n_db,
        "queries": n_q,
        "seconds_cold": tc,
        "seconds_cached": tw,
        "cache_speedup": median(tc) / median(tw),
        "speedup_per_repeat": [c / w for c, w in zip(tc, tw)],
        "cached_s_breakdown": "build_backbone (for the cache key) + search + metrics + result files",
    }


# --------------------------------------------------------------------------------------------------------- memory


def _rollup(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes: Rss and the proportional (shared pages split) Pss parts."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return kids


class MemorySampler(threading.Thread):
    """Peaks, per phase, of this process's and its loader workers' memory (Linux ``smaps_rollup``).

    ``Pss`` splits shared pages between the processes that map them, so the sum over the main process
    and its workers is the run's real footprint; ``anon`` (+ shared memory) cannot be reclaimed, ``file``
    is memory-mapped data the kernel can drop at any time.
    """

    KEYS = ("main_rss", "main_anon", "main_file", "workers_rss", "total_pss", "total_pss_anon", "total_pss_file")

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = dict.fromkeys(self.KEYS, 0)
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def sample(self) -> None:
        pid = os.getpid()
        main = _rollup(pid)
        kids = [_rollup(c) for c in _children(pid)]
        every = [main, *kids]
        now = {
            "main_rss": main.get("Rss", 0),
            "main_anon": main.get("Pss_Anon", 0) + main.get("Pss_Shmem", 0),
            "main_file": main.get("Pss_File", 0),
            "workers_rss": sum(k.get("Rss", 0) for k in kids),
            "total_pss": sum(p.get("Pss", 0) for p in every),
            "total_pss_anon": sum(p.get("Pss_Anon", 0) + p.get("Pss_Shmem", 0) for p in every),
            "total_pss_file": sum(p.get("Pss_File", 0) for p in every),
        }
        with self._lock:
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def phase(self) -> dict[str, float]:
        """The peaks since the last call (GB), then start afresh."""
        self.sample()
        with self._lock:
            out = {f"peak_{k}_gb": gb(v) for k, v in self.peak.items()}
            self.peak = dict.fromkeys(self.KEYS, 0)
        return out

    def stop(self) -> None:
        self._halt.set()
        self.join()


class StandIn(nn.Module):
    """A near-free backbone of the same width: lets the memory run read a whole large split in seconds."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def rss_child(params: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: the real backbone over the first batches of a large memory-mapped 224-px split,
    then a stand-in backbone over all of it, with the peak RSS of both."""
    from cbmir.models.base import Backbone

    args = argparse.Namespace(**params["args"])
    args.conf_dir = Path(args.conf_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cbmir-bench-rss-", dir=args.tmp_dir))
    try:
        env = Env(args, work)
        size, n = params["size"], params["images"]
        t0 = time.perf_counter()
        folder, split = synthetic_split(work / "data", "pathmnist", size, (size, size, 3), n, seed=5)
        write_s = time.perf_counter() - t0
        base = _rollup(os.getpid())
        backbone, cfg = build(env, params["model"])
        sampler = MemorySampler()
        sampler.start()
        t_model, _, _ = pipeline_run(
            env,
            backbone,
            subset(split, params["model_images"]),
            batch=params["batch"],
            min_source=cfg.protocol.min_source_size,
        )
        model_phase = sampler.phase()
        model_peak = gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        standin = Backbone(
            net=StandIn(backbone.dim).eval().requires_grad_(False),
            preprocess=backbone.preprocess,
            dim=backbone.dim,
            unit_norm=False,
        )
        t_all, _, _ = pipeline_run(env, standin, split, batch=params["batch"], min_source=cfg.protocol.min_source_size)
        full_phase = sampler.phase()
        sampler.stop()
        return {
            "images": n,
            "shape": [n, size, size, 3],
            "split_gb": gb(split.images.nbytes),
            "model": params["model"],
            "batch_size": params["batch"],
            "num_workers": env.workers,
            "model_images": params["model_images"],
            "seconds_write": write_s,
            "seconds_model_run": t_model,
            "seconds_full_split_standin": t_all,
            "baseline_rss_gb": gb(base.get("Rss", 0)),
            "peak_rss_after_model_run_gb": model_peak,
            "peak_rss_gb": gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "peak_rss_workers_gb": gb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024),
            "model_phase": model_phase,
            "full_split_phase": full_phase,
        }
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def bench_memory(env: Env, setting: Setting, log: Callable[[str], None]) -> dict[str, Any]:
    args = env.args
    size, n = args.rss_size, args.rss_images
    batch = setting.batch or args.batch_size or args.config_batch_size
    log(
        f"  memory: a fresh process maps {n} x {size}x{size}x3 ({gb(n * size * size * 3):.1f} GB), runs {setting.model} "
        f"over {args.rss_model_batches} batches of {batch}, then a stand-in backbone over all {math.ceil(n / batch)} batches"
    )
    child_args = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("settings", "rss_child")
    }
    params = {
        "args": child_args,
        "size": size,
        "images": n,
        "model": setting.model,
        "batch": batch,
        "model_images": min(n, args.rss_model_batches * batch),
    }
    env_vars = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cbmir.bench", "--rss-child", json.dumps(params)],
        capture_output=True,
        text=True,
        env=env_vars,
        timeout=args.rss_timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RSS_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len(RSS_MARK) :])
    # A PathMNIST cell's search phase: the database embeddings read into memory once by search_faiss
    # (ascontiguousarray of the memory map) and once more inside the FAISS index, plus the queries.
    emb = 4 * PATHMNIST["dim"]
    out["pathmnist_search_phase_estimate_gb"] = gb(2 * PATHMNIST["database"] * emb + PATHMNIST["query"] * emb)
    return out


# ------------------------------------------------------------------------------------------------------- run, CLI


def versions() -> dict[str, str]:
    import lightning
    import PIL
    import timm
    import torchvision

    from cbmir import __version__

    out = {
        "cbmir": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        pass
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = (lambda msg: print(msg, flush=True)) if not args.silent else (lambda msg: None)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "num_workers": args.num_workers,
        "precision": args.precision,
        "quick": args.quick,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "weights": "pretrained" if args.pretrained else "random",
        "versions": versions(),
        "load_average_start": list(os.getloadavg()),
    }
    log(
        f"[cbmir.bench] {result['device_name']} · device {device} · {result['threads']} threads · precision {args.precision} · "
        f"{args.num_workers} loader workers · {args.repeats} repeats after {args.warmup} warm-up"
    )
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cbmir-bench-", dir=args.tmp_dir) as tmp:
        env = Env(args, Path(tmp))
        primary = args.settings[0]
        sections = result["section_seconds"] = {}

        def timed(name, fn, *fargs):
            t0 = time.perf_counter()
            out = fn(env, *fargs, log)
            sections[name] = round(time.perf_counter() - t0, 2)
            return out

        result["settings"] = [timed(s.label, bench_setting, s) for s in args.settings]
        if not args.skip_3d:
            result["volume_3d"] = timed("3d", bench_3d, primary)
        if not args.skip_search:
            result["search"] = timed("search", bench_search)
        if not args.skip_cache:
            result["cache"] = timed("cache", bench_cache, primary)
        if not args.skip_memory:
            result["memory"] = timed("memory", bench_memory, primary)
    worst = lambda key: min(s[key] for s in result["settings"])  # noqa: E731
    result["pipeline_efficiency"] = worst("pipeline_efficiency")
    result["speedup_vs_conventional"] = worst("speedup_vs_conventional")
    result["speedup_3d_batched"] = result["volume_3d"]["speedup_3d_batched"] if "volume_3d" in result else float("nan")
    result["speedup_search"] = result["search"]["speedup_search"] if "search" in result else float("nan")
    result["cache_speedup"] = result["cache"]["cache_speedup"] if "cache" in result else float("nan")
    result["peak_rss_gb"] = result["memory"]["peak_rss_gb"] if "memory" in result else float("nan")
    result["bench_process_peak_rss_gb"] = gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result["targets"] = {
        key: {
            "value": result[key],
            "target": f">= {target}",
            "holds": None if math.isnan(result[key]) else bool(result[key] >= target),
        }
        for key, target in TARGETS.items()
    }
    result["seconds_total"] = time.perf_counter() - t_start
    result["load_average_end"] = list(os.getloadavg())
    return result


def fmt_range(lo_hi: list[float], digits: int = 1) -> str:
    return f"[{lo_hi[0]:.{digits}f}-{lo_hi[1]:.{digits}f}]"


LAYOUT = {"contiguous": "NCHW", "channels_last": "NHWC", "strided": "strided"}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"cbmir bench · {result['device_name']} · device {result['device']} · {result['threads']} threads · "
        f"precision {result['precision']} · {result['num_workers']} workers · {result['weights']} weights",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"medians of {result['repeats']} repeats after {result['warmup']} warm-up; [min-max] over repeats; "
        f"load average {result['load_average_start'][0]:.1f} -> {result['load_average_end'][0]:.1f}",
        "",
        f"{'setting (backbone input layout)':<36} {'batch':>5} {'imgs':>5}  {'pipeline img/s':>22} {'model img/s':>22} {'conventional img/s':>22}  "
        f"{'efficiency':>16} {'vs conv.':>16}",
    ]
    for s in result["settings"]:
        ips, sp = s["images_per_s"], s["images_per_s_spread"]
        cell = lambda k: f"{ips[k]:.1f} {fmt_range(sp[k])}"  # noqa: E731
        eff, spd = s["pipeline_efficiency_per_repeat"], s["speedup_vs_conventional_per_repeat"]
        lines.append(
            f"{s['setting'] + ' (' + LAYOUT.get(s['backbone_input_memory_format'], '?') + ')':<36} {s['batch_size']:>5} {s['images_per_run']:>5}  "
            f"{cell('pipeline'):>22} {cell('model'):>22} {cell('conventional'):>22}  "
            f"{s['pipeline_efficiency']:.3f} {fmt_range(spread(eff), 2):>10} {s['speedup_vs_conventional']:.3f} {fmt_range(spread(spd), 2):>10}"
        )
    if "volume_3d" in result:
        v = result["volume_3d"]
        lines.append(
            f"3D ({v['volumes']} volumes x {v['side']} slices; one-slice loop timed on {v['per_slice_volumes_timed']}): batched {v['slices_per_s']['batched']:.1f} slices/s, one slice per forward "
            f"{v['slices_per_s']['one_slice_per_forward']:.1f} slices/s -> {v['speedup_3d_batched']:.2f}x {fmt_range(spread(v['speedup_per_repeat']), 2)}"
        )
    s = result.get("search")
    lines.append(
        ""
        if not s
        else f"search ({s['database']} x {s['queries']} x {s['dim']}{', scaled down' if s['scaled_down'] else ''}; loop timed on "
        f"{s['loop_queries_timed']} queries): FAISS {median(s['seconds_faiss']):.2f} s, loop {median(s['seconds_loop_extrapolated']):.1f} s "
        f"-> {s['speedup_search']:.1f}x {fmt_range(spread(s['speedup_per_repeat']), 1)}; PathMNIST estimate: FAISS "
        f"{s['pathmnist_faiss_estimate_s']:.0f} s vs loop {s['pathmnist_loop_estimate_s'] / 60:.0f} min"
    )
    c = result.get("cache")
    lines.append(
        ""
        if not c
        else f"cache ({c['database']} + {c['queries']} images): cold cell {median(c['seconds_cold']):.2f} s, cached "
        f"{median(c['seconds_cached']):.2f} s -> {c['cache_speedup']:.1f}x {fmt_range(spread(c['speedup_per_repeat']), 1)}"
    )
    if "memory" in result:
        m = result["memory"]
        mp, fp = m["model_phase"], m["full_split_phase"]
        lines.append(
            f"memory ({m['images']} x {m['shape'][1]}x{m['shape'][2]}x3 = {m['split_gb']:.1f} GB memory-mapped, batch {m['batch_size']}, "
            f"{m['num_workers']} workers): peak RSS {m['peak_rss_gb']:.2f} GB (ru_maxrss, main process; {m['baseline_rss_gb']:.2f} GB "
            f"before the run); {m['model']} batches: all processes {mp['peak_total_pss_gb']:.2f} GB PSS "
            f"({mp['peak_total_pss_anon_gb']:.2f} anon); whole split, stand-in backbone: {fp['peak_total_pss_gb']:.2f} GB PSS "
            f"({fp['peak_total_pss_anon_gb']:.2f} anon, {fp['peak_total_pss_file_gb']:.2f} page cache); "
            f"PathMNIST search phase ~{m['pathmnist_search_phase_estimate_gb']:.1f} GB more"
        )
    lines.append("")
    lines.append(
        "targets: "
        + "; ".join(
            f"{k} {t['value']:.2f} {t['target']} {'skipped' if t['holds'] is None else 'ok' if t['holds'] else 'MISSED'}"
            for k, t in result["targets"].items()
        )
    )
    lines.append(f"total {result['seconds_total']:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m cbmir.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    p.add_argument("--model", default=None, help="a conf/model name or timm=<arch> (default: resnet50)")
    p.add_argument("--source-size", type=int, default=None, help="side of the synthetic source images (default 28)")
    p.add_argument(
        "--input-size",
        nargs="+",
        default=None,
        help="network input side(s), or auto (the model's own preprocessing); several give several settings",
    )
    p.add_argument(
        "--setting",
        action="append",
        type=parse_setting,
        default=None,
        metavar="MODEL,SOURCE,INPUT[,BATCH]",
        help="a setting (repeatable); without --setting/--model/--source-size/--input-size: "
        + " ".join(DEFAULT_SETTINGS),
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for the model config, e.g. model.arch=test_resnet.r160_in1k (repeatable)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per batch (default: the config's batch_size, 64; 16 for inputs above 64 px on CPU and in --quick)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument(
        "--num-workers", type=int, default=None, help="data loader workers (default: the config's num_workers)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per method before timing (default 1)")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="target seconds of forward per timed run (default 4; sizes the runs)",
    )
    p.add_argument("--batches", type=int, default=None, help="batches per timed run (overrides --seconds)")
    p.add_argument("--max-batches", type=int, default=64, help="at most this many batches per timed run")
    p.add_argument("--quick", action="store_true", help="a short run with the same keys: tiny sizes, 1 repeat")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "32-true", "bf16-mixed", "16-mixed"),
        help="auto: bf16-mixed on CUDA, 32-true on CPU (as cells)",
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", dest="pretrained", action="store_true", help="load the model's real weights")
    weights.add_argument("--random", dest="pretrained", action="store_false", help="random weights (default)")
    p.set_defaults(pretrained=False)
    p.add_argument("--volumes", type=int, default=None, help="3D: volumes (default 64; 2 with --quick)")
    p.add_argument(
        "--slice-volumes",
        type=int,
        default=None,
        help="3D: volumes the one-slice-per-forward loop is timed on, then scaled (default 8; 2 with --quick)",
    )
    p.add_argument(
        "--max-forward-batch", type=int, default=None, help="3D: most slices per forward pass (default: the config's)"
    )
    p.add_argument(
        "--search-shape",
        default=None,
        metavar="N,Q,D",
        help="search: database, queries, width (default 20000,1000,2048; the PathMNIST shape is 89996,7180,2048)",
    )
    p.add_argument(
        "--loop-queries", type=int, default=None, help="search: queries the per-query loop is timed on (default 50)"
    )
    p.add_argument(
        "--cache-images", default=None, metavar="N,Q", help="cache: database and query images (default 2000,500)"
    )
    p.add_argument("--rss-images", type=int, default=None, help="memory: images in the large split (default 20000)")
    p.add_argument("--rss-size", type=int, default=None, help="memory: their side (default 224)")
    p.add_argument(
        "--rss-model-batches", type=int, default=None, help="memory: batches through the real backbone (default 2)"
    )
    p.add_argument("--rss-timeout", type=int, default=1800)
    p.add_argument("--skip-3d", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-cache", action="store_true")
    p.add_argument("--output-dir", default="outputs", help="the bench writes <output-dir>/bench/bench.json")
    p.add_argument("--out", default=None, help="the JSON file (default <output-dir>/bench/bench.json)")
    p.add_argument("--conf-dir", type=Path, default=CONF_DIR)
    p.add_argument("--tmp-dir", default=None, help="scratch folder for the synthetic files (default: the system's)")
    p.add_argument("--verbose", action="store_true", help="show Lightning's output")
    p.add_argument("--silent", action="store_true", help="print nothing but the table")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    q = args.quick
    if not args.rss_child:  # the run's defaults are the config's (conf/config.yaml), as cells see them
        base = compose(args.conf_dir, [])
        args.config_batch_size = 16 if q else int(base.batch_size)
        args.num_workers = int(base.num_workers) if args.num_workers is None else args.num_workers
        args.max_forward_batch = args.max_forward_batch or int(base.max_forward_batch)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.precision == "auto":
        args.precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    args.repeats = args.repeats or (1 if q else 3)
    args.seconds = args.seconds or (0.5 if q else 4.0)
    if q and args.batches is None:
        args.batches = 2
    args.volumes = args.volumes or (2 if q else 64)
    args.slice_volumes = args.slice_volumes or (2 if q else 8)
    shape = args.search_shape or ("2000,200,2048" if q else "20000,1000,2048")
    args.search_shape = tuple(int(v) for v in shape.split(","))
    args.loop_queries = args.loop_queries or (20 if q else 50)
    args.cache_images = tuple(int(v) for v in (args.cache_images or ("64,32" if q else "2000,500")).split(","))
    args.rss_images = args.rss_images or (256 if q else 20_000)
    args.rss_size = args.rss_size or (64 if q else 224)
    args.rss_model_batches = args.rss_model_batches or (1 if q else 2)
    if len(args.search_shape) != 3 or len(args.cache_images) != 2:
        p.error("--search-shape is N,Q,D and --cache-images is N,Q")
    if min(args.repeats, args.volumes, *args.search_shape, *args.cache_images, args.rss_images) < 1 or args.warmup < 0:
        p.error("sizes and repeats must be positive")

    if args.setting:
        settings = list(args.setting)
    elif q or args.model or args.source_size or args.input_size:
        model, source = args.model or "resnet50", args.source_size or 28
        inputs = args.input_size or ["auto"]
        settings = [parse_setting(f"{model},{source},{i}") for i in inputs]
    else:
        settings = [parse_setting(s) for s in DEFAULT_SETTINGS]
    args.settings = settings
    args.out = Path(args.out) if args.out else Path(args.output_dir) / "bench" / "bench.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.rss_child:
        out = rss_child(json.loads(args.rss_child))
        print(RSS_MARK + json.dumps(out), flush=True)
        return out
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(
        json.dumps({**result, "settings_requested": [s.__dict__ for s in args.settings]}, indent=2, default=str)
    )
    os.replace(tmp, args.out)
    print(table(result))
    print(f"[cbmir.bench] wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
