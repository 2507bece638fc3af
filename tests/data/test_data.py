"""MedMNIST files: naming, download with MD5, offline and corrupt errors, split extraction, batched items."""

import shutil

import numpy as np
import pytest
import torch

from cbmir import data
from cbmir.data import ImageArrayDataset, ensure_file, file_name, md5sum, medmnist, open_split, split_arrays
from cbmir.errors import DataError
from tests.helpers.medmnist_fixtures import write_medmnist


class _Dataset(dict):
    """Stands in for the `dataset` config node."""

    __getattr__ = dict.__getitem__


def test_file_names_follow_medmnist():
    assert file_name("bloodmnist", 28) == "bloodmnist.npz"
    assert file_name("bloodmnist", 224) == "bloodmnist_224.npz"


def test_split_extraction_is_memory_mapped_and_exact(tmp_path):
    npz = write_medmnist(tmp_path, "bloodmnist", 28, rgb=True, n_classes=4)
    folder = split_arrays(npz)
    ref = np.load(npz)
    for key in ("train_images", "test_images", "val_labels"):
        arr = np.load(folder / f"{key}.npy", mmap_mode="r")
        assert isinstance(arr, np.memmap)
        np.testing.assert_array_equal(arr, ref[key])
    assert (folder / ".complete").exists()
    mtime = (folder / "train_images.npy").stat().st_mtime_ns
    split_arrays(npz)  # second call reuses the extracted arrays
    assert (folder / "train_images.npy").stat().st_mtime_ns == mtime


def test_open_split_roles_and_labels(tmp_path):
    write_medmnist(tmp_path, "chestmnist", 28, multilabel=14)
    cfg = _Dataset(flag="chestmnist", download=False, verify_md5=False)
    train = open_split(cfg, 28, tmp_path, "train")
    assert train.multilabel and train.labels.shape == (24, 14) and train.labels.dtype == np.int64
    assert train.images.dtype == np.uint8 and train.images.shape == (24, 28, 28)


def test_dataset_items_and_batches_are_uint8_tensors(tmp_path):
    write_medmnist(tmp_path, "bloodmnist", 28, rgb=True)
    split = open_split(_Dataset(flag="bloodmnist", download=False, verify_md5=False), 28, tmp_path, "test")
    ds = ImageArrayDataset(split)
    index, image, label = ds[3]
    assert index == 3 and image.dtype == torch.uint8 and image.shape == (28, 28, 3)
    idx, images, labels = ds.__getitems__([5, 1, 7])
    assert idx.tolist() == [5, 1, 7] and images.shape == (3, 28, 28, 3) and labels.shape == (3, 1)
    torch.testing.assert_close(images[1], torch.from_numpy(np.array(split.images[1])))
    # The loader hands out those tensors as they are: no PIL, no per-image transform.
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=data.collate_batched)
    first = next(iter(loader))
    assert isinstance(first[1], torch.Tensor) and first[1].dtype == torch.uint8 and first[0].tolist() == [0, 1, 2, 3]


def _fake_server(source, seen):
    def download(url, root, filename, md5):
        seen.append((url, filename, md5))
        shutil.copy(source, root / filename)

    return download


def test_missing_file_is_downloaded_and_md5_checked(tmp_path, monkeypatch):
    source = write_medmnist(tmp_path / "server", "breastmnist", 28, n_classes=2)
    seen = []
    monkeypatch.setattr(medmnist, "_download", _fake_server(source, seen))
    monkeypatch.setattr(
        medmnist, "source_of", lambda flag, size: ("https://example.org/breastmnist.npz", md5sum(source))
    )
    path = ensure_file("breastmnist", 28, tmp_path / "data")
    assert path.exists() and seen == [("https://example.org/breastmnist.npz", "breastmnist.npz", md5sum(source))]


def test_download_with_wrong_md5_is_rejected_and_removed(tmp_path, monkeypatch):
    source = write_medmnist(tmp_path / "server", "breastmnist", 28, n_classes=2)
    monkeypatch.setattr(medmnist, "_download", _fake_server(source, []))
    with pytest.raises(DataError, match="MD5"):
        ensure_file("breastmnist", 28, tmp_path / "data")  # real INFO MD5 != our tiny file
    assert not (tmp_path / "data" / "breastmnist.npz").exists()


def test_offline_error_names_file_url_md5_and_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(medmnist, "_download", offline)
    url, md5 = data.source_of("pathmnist", 224)
    with pytest.raises(DataError) as err:
        ensure_file("pathmnist", 224, tmp_path / "data")
    msg = str(err.value)
    assert "pathmnist_224.npz" in msg and url in msg and md5 in msg and str((tmp_path / "data").resolve()) in msg


def test_no_download_when_disabled(tmp_path, monkeypatch):
    monkeypatch.setattr(medmnist, "_download", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataError, match="dataset.download=false"):
        ensure_file("dermamnist", 64, tmp_path, download=False)


def test_corrupt_file_says_so(tmp_path):
    bad = tmp_path / "bloodmnist.npz"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DataError, match="corrupt"):
        split_arrays(bad)


def test_md5_mismatch_of_local_file(tmp_path):
    npz = write_medmnist(tmp_path, "bloodmnist", 28, rgb=True)
    with pytest.raises(DataError, match="MD5"):
        split_arrays(npz, expected_md5="0" * 32)


def test_file_without_medmnist_keys(tmp_path):
    path = tmp_path / "bloodmnist.npz"
    np.savez(path, images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="lacks"):
        split_arrays(path)


def test_truncated_zip_is_corrupt(tmp_path):
    npz = write_medmnist(tmp_path, "bloodmnist", 28, rgb=True)
    blob = npz.read_bytes()
    npz.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt"):
        split_arrays(npz)


# --- 3D resampling --------------------------------------------------------------------------


def test_volume_resize_28_to_32_keeps_constant_and_linear_content():
    from cbmir.data import resize_volumes

    const = np.full((2, 28, 28, 28), 77, np.uint8)
    out = resize_volumes(const, 32)
    assert out.shape == (2, 32, 32, 32) and out.dtype == np.uint8 and np.all(out == 77)
    ramp = np.broadcast_to((np.arange(28) * 9)[None, :, None, None], (1, 28, 28, 28)).astype(np.uint8)
    out = resize_volumes(ramp, 32)
    # the first axis is resampled by a cubic spline, which reproduces a linear ramp exactly
    expected = np.arange(32) * 9 * 27 / 31
    np.testing.assert_allclose(out[0, :, 10, 10], np.floor(expected + 1e-4), atol=1)


def test_volume_resize_clips_overshoot_instead_of_wrapping():
    from scipy.ndimage import zoom

    from cbmir.data import resize_volumes

    step = np.zeros((1, 28, 28, 28), np.uint8)
    step[:, 14:] = 255  # a sharp edge: the cubic spline overshoots on both sides
    raw = zoom(step.astype(np.float32), (1, 32 / 28, 1, 1), order=3)
    assert raw.max() > 255.5 and raw.min() < -0.5  # the study's cast would wrap these around
    out = resize_volumes(step, 32)
    assert np.all(out[raw[..., :1, :1].repeat(32, -2).repeat(32, -1) > 255] == 255)
    assert np.all(out[raw[..., :1, :1].repeat(32, -2).repeat(32, -1) < 0] == 0)


def test_resized_volumes_are_cached_once(tmp_path):
    cfg = _Dataset(flag="adrenalmnist3d", download=False, verify_md5=False)
    write_medmnist(tmp_path, "adrenalmnist3d", 28, depth=28, n={"train": 3, "val": 1, "test": 2})
    split = open_split(cfg, 28, tmp_path, "train", volume_side=32)
    assert split.images.shape == (3, 32, 32, 32) and isinstance(split.images, np.memmap)
    cached = tmp_path / "adrenalmnist3d" / "train_images_32.npy"
    mtime = cached.stat().st_mtime_ns
    open_split(cfg, 28, tmp_path, "train", volume_side=32)
    assert cached.stat().st_mtime_ns == mtime
    assert open_split(cfg, 28, tmp_path, "train").images.shape == (3, 28, 28, 28)


def test_dataset_pickles_a_memory_map_by_reference(tmp_path):
    import pickle

    write_medmnist(tmp_path, "bloodmnist", 28, rgb=True)
    ds = ImageArrayDataset(
        open_split(_Dataset(flag="bloodmnist", download=False, verify_md5=False), 28, tmp_path, "train")
    )
    blob = pickle.dumps(ds)
    assert len(blob) < ds.split.images.nbytes / 4  # the pixels stay on disk
    clone = pickle.loads(blob)
    assert isinstance(clone.split.images, np.memmap)
    np.testing.assert_array_equal(clone.__getitems__([3, 5])[1], ds.__getitems__([3, 5])[1])
