"""The dataset that feeds extraction: ``(index, uint8 image, label)`` batches over a memory-mapped split.

All pixel work happens batched on the device, never per item.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cbmir.data.datasets import Split


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
