"""MedMNIST source files and the datasets that feed extraction.

Each official ``.npz`` is split once into one ``.npy`` per array (streamed out of
the zip, never loaded whole) and then memory-mapped, so PathMNIST-224 (13.5 GB of
pixels) runs on a 24 GB machine. Items are ``(index, uint8 image, label)``:
all pixel work happens batched on the device, never per item.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cbmir.errors import ConfigError, DataError
from cbmir.locks import exclusive, lock_path

SPLITS = ("train", "val", "test")
#: The study's roles: the training split is the searchable database, the test split the queries.
ROLE_SPLIT = {"database": "train", "query": "test"}
SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)


def medmnist_info(flag: str) -> dict:
    """The medmnist package's metadata (URLs, MD5s, split sizes) for ``flag``."""
    from medmnist import INFO

    if flag not in INFO:
        known = ", ".join(sorted(INFO))
        raise ConfigError(f"unknown MedMNIST flag {flag!r}; known flags: {known}")
    return INFO[flag]


def file_name(flag: str, size: int) -> str:
    """MedMNIST's naming: ``{flag}.npz`` at 28 px, ``{flag}_{size}.npz`` above."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def source_of(flag: str, size: int) -> tuple[str, str]:
    """The official (URL, MD5) of one file."""
    info = medmnist_info(flag)
    suffix = "" if size == 28 else f"_{size}"
    try:
        return info[f"url{suffix}"], info[f"MD5{suffix}"]
    except KeyError:
        raise ConfigError(f"MedMNIST has no {flag} file at size {size}") from None


def md5sum(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, root: Path, filename: str, md5: str) -> None:
    """Download with MD5 check, as the medmnist package does (a seam that tests replace)."""
    from torchvision.datasets.utils import download_url

    download_url(url=url, root=str(root), filename=filename, md5=md5)


def ensure_file(flag: str, size: int, data_dir: str | Path, *, download: bool = True) -> Path:
    """Path of the ``.npz``, downloading it (MD5-checked) when missing."""
    root = Path(data_dir)
    path = root / file_name(flag, size)
    if path.exists():
        return path
    url, md5 = source_of(flag, size)
    howto = (
        f"Download {path.name} by hand from\n  {url}\n"
        f"check that its MD5 is {md5}, and put it in\n  {root.resolve()}\n"
        f"(or point paths.data_dir at the folder that holds it)."
    )
    if not download:
        raise DataError(f"{path.name} is not in {root.resolve()} and dataset.download=false.\n{howto}")
    root.mkdir(parents=True, exist_ok=True)
    print(f"[cbmir] downloading {path.name} ({url}) into {root}")
    try:
        _download(url, root, path.name, md5)
    except Exception as exc:  # network down, server error, MD5 mismatch, ...
        path.unlink(missing_ok=True)
        raise DataError(f"could not download {path.name}: {exc}\n{howto}") from exc
    if not path.exists() or md5sum(path) != md5:
        path.unlink(missing_ok=True)
        raise DataError(f"downloaded {path.name} failed its MD5 check.\n{howto}")
    return path


def _extract_member(zf: zipfile.ZipFile, member: str, dest: Path) -> None:
    tmp = dest.with_suffix(".npy.tmp")
    with zf.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 24)
    os.replace(tmp, dest)


def split_arrays(npz: Path, *, expected_md5: str | None = None) -> Path:
    """Stream every array of ``npz`` into ``<stem>/<key>.npy`` once; return that folder.

    A finished folder carries a ``.complete`` marker, so a crash mid-way restarts cleanly.
    Concurrent cells (a cluster sweep) split a file once: one holds ``<stem>.lock``
    (:mod:`cbmir.locks`), the others wait for it and reuse its folder.
    """
    out = npz.with_suffix("")
    if _is_split(npz):
        return out
    with exclusive(lock_path(out)):
        if _is_split(npz):
            return out
        return _split_arrays(npz, expected_md5)


def _is_split(npz: Path) -> bool:
    marker = npz.with_suffix("") / ".complete"
    return marker.exists() and marker.stat().st_mtime >= npz.stat().st_mtime


def _split_arrays(npz: Path, expected_md5: str | None) -> Path:
    out = npz.with_suffix("")
    marker = out / ".complete"
    if expected_md5 is not None:
        got = md5sum(npz)
        if got != expected_md5:
            raise DataError(
                f"{npz} is corrupt or not the official file: MD5 {got}, expected {expected_md5}. "
                "Delete it to download it again (or set dataset.verify_md5=false for a file of your own)."
            )
    out.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(npz) as zf:
            names = [n for n in zf.namelist() if n.endswith(".npy")]
            needed = {f"{s}_{kind}.npy" for s in ("train", "test") for kind in ("images", "labels")}
            missing = needed - set(names)
            if missing:
                raise DataError(f"{npz} is not a MedMNIST file: it lacks {sorted(missing)}")
            for name in names:
                _extract_member(zf, name, out / name)
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
        raise DataError(
            f"{npz} is corrupt ({exc.__class__.__name__}: {exc}); delete it and run again to re-download it."
        ) from exc
    marker.touch()
    return out


@dataclass(frozen=True)
class Split:
    """One split of one MedMNIST file: memory-mapped images and in-memory labels."""

    flag: str
    size: int
    split: str
    images: np.ndarray  # uint8, (N, H, W) | (N, H, W, 3) | (N, D, H, W)
    labels: np.ndarray  # int64, (N, 1) or (N, L) multi-label

    def __len__(self) -> int:
        return len(self.images)

    @property
    def multilabel(self) -> bool:
        return self.labels.shape[1] > 1


def load_split(folder: Path, flag: str, size: int, split: str) -> Split:
    try:
        images = np.load(folder / f"{split}_images.npy", mmap_mode="r")
        labels = np.asarray(np.load(folder / f"{split}_labels.npy"), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder} holds an unreadable {split} split ({exc}); delete the folder to rebuild it") from exc
    if labels.ndim == 1:
        labels = labels[:, None]
    if images.dtype != np.uint8 or len(images) != len(labels):
        raise DataError(
            f"{folder}: {split} images must be uint8 with one label row each, "
            f"got {images.dtype} {images.shape} and labels {labels.shape}"
        )
    return Split(flag, size, split, images, labels)


def open_split(cfg_dataset, size: int, data_dir: str | Path, split: str, *, volume_side: int | None = None) -> Split:
    """Find or download the file, split it into ``.npy`` once, and map the requested split.

    ``volume_side`` (3D only) resamples every volume to ``volume_side``³ once and caches that too.
    """
    flag = cfg_dataset.flag
    npz = ensure_file(flag, size, data_dir, download=bool(cfg_dataset.get("download", True)))
    md5 = source_of(flag, size)[1] if cfg_dataset.get("verify_md5", True) else None
    folder = split_arrays(npz, expected_md5=md5)
    loaded = load_split(folder, flag, size, split)
    if volume_side is None or loaded.images.ndim != 4 or loaded.images.shape[1:] == (volume_side,) * 3:
        return loaded
    return Split(flag, size, split, resized_volumes(folder, split, loaded.images, volume_side), loaded.labels)


def resize_volumes(volumes: np.ndarray, side: int) -> np.ndarray:
    """The study's 3D resampling to ``side``³, clipped to 0–255 before the cast to uint8.

    First axis: cubic spline zoom (scipy, order 3); then every slice: bicubic 2D resize
    (torch, a = -0.75, as OpenCV's INTER_CUBIC). The study's code cast to uint8 without
    clipping, so spline overshoot wrapped around (256.3 → 0, -1.5 → 255); cbmir clips
    first. Values are then truncated, like the study's ``astype(uint8)``.
    """
    import torch.nn.functional as F
    from scipy.ndimage import zoom

    x = np.asarray(volumes, dtype=np.float32)
    if x.shape[1] != side:
        x = zoom(x, (1, side / x.shape[1], 1, 1), order=3)
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.shape[-2:] != (side, side):
        n, d = t.shape[:2]
        t = F.interpolate(t.reshape(n * d, 1, *t.shape[-2:]), size=(side, side), mode="bicubic", align_corners=False)
        t = t.reshape(n, d, side, side)
    return t.clamp_(0, 255).numpy().astype(np.uint8)


def resized_volumes(folder: Path, split: str, images: np.ndarray, side: int, chunk: int = 64) -> np.ndarray:
    """``resize_volumes`` of a whole split, done once in chunks and memory-mapped from ``<split>_images_<side>.npy``."""
    path = folder / f"{split}_images_{side}.npy"
    if not path.exists():
        with exclusive(lock_path(path)):  # concurrent cells resample once; the others wait and map the result
            if not path.exists():
                _resample_split(path, images, side, chunk)
    return np.load(path, mmap_mode="r")


def _resample_split(path: Path, images: np.ndarray, side: int, chunk: int) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), side, side, side))
    for start in range(0, len(images), chunk):
        out[start : start + chunk] = resize_volumes(images[start : start + chunk], side)
    out.flush()
    del out
    os.replace(tmp, path)


class ImageArrayDataset(Dataset):
    """``(index, uint8 image, label)`` items over a memory-mapped split.

    ``__getitems__`` fetches a whole batch with one sorted slice of the memory map,
    so the data loader does no per-image work at all.
    """

    def __init__(self, split: Split):
        self.split = split

    def __getstate__(self) -> dict:
        # Worker processes started by spawn/forkserver re-open the memory map instead of
        # receiving a pickled copy of every pixel.
        sp, images = self.split, self.split.images
        if isinstance(images, np.memmap) and images.filename:
            images = ("memmap", images.filename, images.offset, images.dtype.str, images.shape)
        return {"fields": (sp.flag, sp.size, sp.split, sp.labels), "images": images}

    def __setstate__(self, state: dict) -> None:
        images = state["images"]
        if isinstance(images, tuple) and images[0] == "memmap":
            _, filename, offset, dtype, shape = images
            images = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
        flag, size, split, labels = state["fields"]
        self.split = Split(flag, size, split, images, labels)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return i, torch.from_numpy(np.array(self.split.images[i])), torch.from_numpy(self.split.labels[i])

    def __getitems__(self, indices: list[int]):
        idx = np.asarray(indices, dtype=np.int64)
        images = self.split.images[idx] if len(idx) else self.split.images[:0]
        return (
            torch.from_numpy(idx),
            torch.from_numpy(np.ascontiguousarray(images)),
            torch.from_numpy(self.split.labels[idx]),
        )


def collate_batched(batch):
    """Identity collate: ``__getitems__`` already returns a stacked batch."""
    return batch
