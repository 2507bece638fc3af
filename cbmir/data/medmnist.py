"""MedMNIST source files: download with MD5 check, and the ``.npz`` split into memory-mappable ``.npy`` files.

Each official ``.npz`` is split once into one ``.npy`` per array (streamed out of
the zip, never loaded whole) and then memory-mapped, so PathMNIST-224 (13.5 GB of
pixels) runs on a 24 GB machine.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import zipfile
from pathlib import Path

from cbmir.data.datasets import Split, load_split
from cbmir.data.volumes import resized_volumes
from cbmir.errors import ConfigError, DataError
from cbmir.layout import medmnist_file_name as file_name
from cbmir.logs import get_logger
from cbmir.safety.integrity import file_digest, fingerprint, problem
from cbmir.safety.locks import exclusive, lock_path

log = get_logger(__name__)


@functools.cache
def _medmnist_table() -> dict:
    """``medmnist.info.INFO`` without running the package's ``__init__`` (which imports torch and scikit-learn):
    the table is a plain dict in its own module, and a config is validated before torch is imported."""
    import importlib.util

    package = importlib.util.find_spec("medmnist")
    if package is None or not package.submodule_search_locations:
        raise ConfigError("the medmnist package is not installed: pip install medmnist")
    path = Path(package.submodule_search_locations[0]) / "info.py"
    spec = importlib.util.spec_from_file_location("cbmir_medmnist_info", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.INFO


def medmnist_info(flag: str) -> dict:
    """The medmnist package's metadata (URLs, MD5s, split sizes) for ``flag``."""
    INFO = _medmnist_table()
    if flag not in INFO:
        known = ", ".join(sorted(INFO))
        raise ConfigError(f"unknown MedMNIST flag {flag!r}; known flags: {known}")
    return INFO[flag]


def source_of(flag: str, size: int) -> tuple[str, str]:
    """The official (URL, MD5) of one file."""
    info = medmnist_info(flag)
    suffix = "" if size == 28 else f"_{size}"
    try:
        return info[f"url{suffix}"], info[f"MD5{suffix}"]
    except KeyError:
        raise ConfigError(f"MedMNIST has no {flag} file at size {size}") from None


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


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
    log.info("downloading %s (%s) into %s", path.name, url, root)
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

    A finished folder carries a ``.complete`` marker (each file's size and checksum), so a crash
    mid-way restarts cleanly and :func:`split_problem` can tell a damaged file later.
    """
    out = npz.with_suffix("")
    marker = out / ".complete"
    if marker.exists() and marker.stat().st_mtime >= npz.stat().st_mtime:
        return out
    with exclusive(lock_path(out)):  # one process extracts; the others wait, then reuse
        if marker.exists() and marker.stat().st_mtime >= npz.stat().st_mtime:
            return out
        return _split_arrays(npz, out, marker, expected_md5)


def _split_arrays(npz: Path, out: Path, marker: Path, expected_md5: str | None) -> Path:
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
    marker.write_text(json.dumps({name: fingerprint(out / name) for name in names}, indent=1))
    return out


def split_problem(folder: Path, split: str) -> str | None:
    """Why the extracted files of ``split`` cannot be trusted (``None``: they match their recorded checksums)."""
    try:
        recorded = json.loads((folder / ".complete").read_text())
    except (FileNotFoundError, ValueError):
        return "no checksums were recorded for its files"
    for name in (f"{split}_images.npy", f"{split}_labels.npy"):
        if reason := problem(folder / name, recorded.get(name)):
            return f"{name}: {reason}"
    return None


def open_medmnist_split(
    cfg_dataset, size: int, data_dir: str | Path, split: str, *, volume_side: int | None = None
) -> Split:
    """Find or download the file, split it into ``.npy`` once, and map the requested split.

    ``volume_side`` (3D only) resamples every volume to ``volume_side``³ once and caches that too.
    """
    flag = cfg_dataset.flag
    npz = ensure_file(flag, size, data_dir, download=bool(cfg_dataset.get("download", True)))
    md5 = source_of(flag, size)[1] if cfg_dataset.get("verify_md5", True) else None
    folder = split_arrays(npz, expected_md5=md5)
    if reason := split_problem(folder, split):
        log.warning("%s: %s; extracting its arrays again from %s", folder, reason, npz.name)
        (folder / ".complete").unlink(missing_ok=True)
        folder = split_arrays(npz, expected_md5=md5)
        if reason := split_problem(folder, split):
            raise DataError(f"{folder}: {reason} right after extraction; the disk may be failing")
    loaded = load_split(folder, flag, size, split)
    if volume_side is None or loaded.images.ndim != 4 or loaded.images.shape[1:] == (volume_side,) * 3:
        return loaded
    return Split(flag, size, split, resized_volumes(folder, split, loaded.images, volume_side), loaded.labels)
