"""The search trade-off figure from a real cbmir sweep: synthetic BloodMNIST-shaped data, random-weight ResNet-50.

    python scripts/tradeoff_demo.py [--out /tmp/cbmir_tradeoff] [--train 20000] [--test 2000] [--png docs/tradeoff.png]

1. writes ``bloodmnist.npz`` (28 px, RGB, 8 classes) whose classes differ in stripe orientation,
   frequency and tint, with enough per-image jitter and noise that retrieval is imperfect;
2. runs ``python -m cbmir.run`` (protocol=standard) once exactly and once per search setting: HNSW32,
   IVF64,Flat with nprobe 1 and 8, IVF64,PQ16, float16 storage, PCA to 64 dimensions (the embeddings
   are cached, so only the first cell runs the model);
3. runs ``python -m cbmir.report`` on its results folder, which writes
   ``report/tradeoff/standard_bloodmnist_28_resnet50.{md,png}``, and copies the figure to ``--png``.

The numbers describe FAISS on 2048-d random-feature embeddings of synthetic images, not a trained model
on real data: they show what the report draws and how the settings rank, nothing about BloodMNIST.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cbmir.data import file_name

log = logging.getLogger("cbmir.tradeoff_demo")

N_CLASSES = 8
# One command line per cell group: the exact reference first (it fills the embedding cache), then the settings.
SETTINGS: list[list[str]] = [
    ["-m", "search.index=Flat,HNSW32"],
    ["-m", "search.index='IVF64,Flat'", "search.nprobe=1,8"],
    ["search.index='IVF64,PQ16'", "search.nprobe=8"],
    ["store.dtype=float16"],
    ["search.pca=64"],
]


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """RGB stripes: orientation, frequency and tint set by the class, each jittered per image, plus noise."""
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = np.pi * labels / N_CLASSES + rng.normal(0, 0.18, n)
    freq = (2.5 + 1.2 * (labels % 4)) * rng.uniform(0.85, 1.15, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    contrast = rng.uniform(0.4, 1.0, n)
    wave = np.sin(
        2 * np.pi * freq[:, None, None] * (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
        + phase[:, None, None]
    )
    gray = 128 + 90 * contrast[:, None, None] * wave + rng.normal(0, 30, (n, size, size))
    tint = np.stack([np.ones(n), 0.8 + 0.05 * labels, 0.75 + 0.1 * (labels % 3)], axis=1)
    tint = tint * rng.uniform(0.85, 1.15, (n, 3))
    return np.clip(gray[..., None] * tint[:, None, None, :], 0, 255).astype(np.uint8)


def write_data(data_dir: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``bloodmnist.npz`` with the official keys (``<split>_images`` N×28×28×3, ``<split>_labels`` N×1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in counts.items():
        labels = rng.permutation(np.arange(count) % N_CLASSES)
        arrays[f"{split}_images"] = class_images(labels, 28, rng)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / file_name("bloodmnist", 28)
    np.savez_compressed(path, **arrays)
    return path


def run(args: list[str]) -> float:
    """Run one command in a fresh offline process; returns its wall seconds (raises when it fails)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    start = time.perf_counter()
    log.info("$ %s", " ".join(args))
    subprocess.run([sys.executable, *args], check=True, env=env)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/cbmir_tradeoff"), help="output folder (data, results)")
    p.add_argument("--train", type=int, default=20000, help="database images")
    p.add_argument("--test", type=int, default=2000, help="query images (and as many validation images)")
    p.add_argument("--png", type=Path, default=Path("docs/tradeoff.png"), help="where to copy the figure")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = args.out.resolve()
    timings: dict[str, float] = {}

    start = time.perf_counter()
    path = write_data(out / "data", {"train": args.train, "val": args.test, "test": args.test})
    timings["data"] = time.perf_counter() - start
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)

    cell = [
        "-m", "cbmir.run", "protocol=standard", "dataset=bloodmnist", "size=28", "model=resnet50",
        "model.pretrained=false", f"paths.output_dir={out}", f"paths.data_dir={out / 'data'}",
        "dataset.download=false", "dataset.verify_md5=false", "gallery=false", "logger=csv",
    ]  # fmt: skip
    for setting in SETTINGS:
        flags = [s for s in setting if s == "-m"]
        overrides = [s for s in setting if s != "-m"]
        timings[" ".join(overrides)] = run([*cell[:2], *flags, *cell[2:], *overrides])

    report = out / "report"
    timings["report"] = run(["-m", "cbmir.report", str(out / "results"), "--out", str(report), "--no-ci"])
    figure = report / "tradeoff" / "standard_bloodmnist_28_resnet50.png"
    args.png.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(figure, args.png)
    log.info("figure %s (%.0f KB), table %s", args.png, args.png.stat().st_size / 1e3, figure.with_suffix(".md"))
    for step, seconds in timings.items():
        log.info("%8.1f s  %s", seconds, step)
    log.info("%8.1f s  total", sum(timings.values()))


if __name__ == "__main__":
    main()
