"""Extraction throughput: cbmir's pipeline vs the backbone's forward alone vs the conventional PIL loader.

1. pipeline: ``Trainer.predict`` with the real ``EmbeddingModule``, ``make_loader``'s DataLoader over a
   memory-mapped MedMNIST-format split and the ``EmbeddingWriter``, timed from building the trainer to the
   merged ``.npy``;
2. model: the backbone's forward alone on tensors already on the device, of the preprocessed shape (and memory
   format), same batch size and precision; ``pipeline_efficiency`` = 1 / 2;
3. conventional: a PIL image per item, torchvision ``Compose([Resize, (CenterCrop,) ToTensor, Normalize])`` in a
   torch Dataset, default collate, then the forward (the study's scripts); ``speedup_vs_conventional`` = 1 / 3.

The three run back to back in paired rounds (rotating order, :mod:`cbmir.bench.rounds`), a ratio per round, so
load from other processes hits them alike; each figure is the median of its per-round ratios with a 95 % interval.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from cbmir.bench.common import Env, autocast, build, median, quiet, subset, sync, synthetic_split
from cbmir.bench.profiles import TARGETS, Profile, Setting
from cbmir.bench.rounds import Ratio, figures, run_rounds

log = logging.getLogger(__name__)


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
    from cbmir.cell.extract import EmbeddingModule
    from cbmir.cell.run import build_trainer, make_loader
    from cbmir.cell.store import EmbeddingWriter

    target = env.scratch("pipeline")
    dim = dim or backbone.dim
    clock = BatchClock()
    with quiet(not env.verbose):
        sync(env.device)
        t0 = time.perf_counter()
        writer = EmbeddingWriter([target], [len(split)], dim)
        trainer = build_trainer(env.trainer(), env.precision, [writer, clock], env.work)
        module = EmbeddingModule(
            backbone, min_source_size=min_source, volume=volume, max_forward_batch=max_forward_batch
        )
        trainer.predict(module, dataloaders=[make_loader(split, batch, env.workers)], return_predictions=False)
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
    from cbmir.cell.extract import EmbeddingModule

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
    """The least cosine similarity between matching rows: do both paths embed the same images the same way?"""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(1).min())


def net_crop(net: nn.Module) -> int | None:
    from cbmir.models.common import CenterCrop

    if isinstance(net, nn.Sequential) and len(net) and isinstance(net[0], CenterCrop):
        return net[0].size
    return None


def default_batch(env: Env, config_batch: int, net_input: int) -> int:
    """The config's batch size; 16 for inputs above 64 px on CPU (seconds per batch there: keeps the run short)."""
    if env.device.type == "cpu" and net_input > 64:
        return min(16, config_batch)
    return config_batch


#: The extraction's ratios: images/s of the pipeline over the model alone, and over the conventional loader.
RATIOS = (
    Ratio("pipeline_efficiency", "pipeline", "model"),
    Ratio("speedup_vs_conventional", "pipeline", "conventional"),
)


def bench_setting(
    env: Env,
    setting: Setting,
    profile: Profile,
    *,
    config_batch: int,
    batches: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Pipeline, model-only and conventional images/s of one setting in paired rounds (rotating order)."""
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
    batch = setting.batch or default_batch(env, config_batch, net_input)
    net = backbone.net
    gen = torch.Generator().manual_seed(0)
    sample = torch.randint(0, 256, (batch, setting.source, setting.source, 3), dtype=torch.uint8, generator=gen)
    # the model-only figure runs on exactly what the pipeline feeds the backbone (incl. its memory format)
    x = backbone_input(backbone, sample, min_source=min_source, device=env.device)
    shape = tuple(x.shape[1:])

    # probe the forward's cost (after a warm-up forward) to size the timed runs
    t_batch = min(model_run(env, net, x, n_batches=1) for _ in range(max(1, profile.warmup) + 1))
    wanted = math.ceil(profile.seconds / max(t_batch, 1e-6))
    n_batches = batches or max(profile.min_batches, min(profile.max_batches, wanted))
    n = n_batches * batch
    log.info(
        "  %s: batch %d, %d batches (%d images) per run, backbone input %s %s, ~%.3f s/batch forward",
        setting.label,
        batch,
        n_batches,
        n,
        shape,
        memory_format(x),
        t_batch,
    )
    folder, split = synthetic_split(
        env.work / f"data_{env.counter}", "pathmnist", setting.source, (setting.source, setting.source, 3), n, seed=1
    )
    env.counter += 1
    transform = conventional_transform(spec, source=setting.source, min_source=min_source, crop=crop)

    one = subset(split, batch)
    agreement = None
    for w in range(max(1, profile.warmup)):
        _t, _st, emb_p = pipeline_run(env, backbone, one, batch=batch, min_source=min_source, keep=w == 0)
        _t, emb_c = conventional_run(env, net, one, transform, batch=batch, keep=w == 0)
        if w == 0:  # both paths embed the same images alike (torch vs PIL bilinear upsampling differ by rounding)
            agreement = cosine_rows(emb_p, emb_c)
    steady: list[float] = []

    def pipeline() -> float:
        t, st, _ = pipeline_run(env, backbone, split, batch=batch, min_source=min_source)
        steady.append(st)
        return t

    rounds = run_rounds(
        {
            "pipeline": pipeline,
            "model": lambda: model_run(env, net, x, n_batches=n_batches),
            "conventional": lambda: conventional_run(env, net, split, transform, batch=batch)[0],
        },
        RATIOS,
        profile.budget(profile.budget_s),
        clock=clock,
    )
    # for information: the same forward in the other memory layout (NCHW <-> channels_last)
    alt = x.contiguous() if not x.is_contiguous() else x.contiguous(memory_format=torch.channels_last)
    alt_ips = n / model_run(env, net, alt, n_batches=n_batches)
    out = figures(rounds, work=dict.fromkeys(rounds["seconds"], n), targets=TARGETS, precision=profile.halfwidth)
    shutil.rmtree(folder.parent, ignore_errors=True)
    steady_ok = [v for v in steady if math.isfinite(v)]
    model_ips = out["rate_per_s"]["model"]
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
        "batches_per_run": n_batches,
        "images_per_run": n,
        "pipeline_steady_images_per_s": median(steady_ok) if steady_ok else float("nan"),
        "pipeline_efficiency_steady": (median(steady_ok) / model_ips) if steady_ok else float("nan"),
        "pipeline_fixed_s": (median(out["seconds"]["pipeline"]) - n / median(steady_ok)) if steady_ok else float("nan"),
        "model_other_layout_images_per_s": alt_ips,
        "min_cosine_pipeline_vs_conventional": agreement,
        **out,
    }
