"""Embedding extraction: device-side preprocessing and the inference-only LightningModule."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from cbmir.cell.spec import VolumeSpec
from cbmir.errors import CbmirError
from cbmir.logs import get_logger
from cbmir.models.base import Backbone, Preprocess
from cbmir.safety import faults

log = get_logger(__name__)

# ITU-R 601-2 luma in PIL's fixed-point form: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
LUMA_FIXED = (19595, 38470, 7471)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    # torch's antialiased kernels are PIL's resampling filters; PIL's bicubic uses them when enlarging too.
    antialias = shrinking or mode == "bicubic"
    kwargs = {"align_corners": False, "antialias": antialias} if mode != "nearest" else {}
    # Pixel values stay in [0, 255] as with PIL on uint8 images (bicubic overshoots otherwise).
    return F.interpolate(x, size=size, mode=mode, **kwargs).clamp_(0, 255)


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def _pad_center(x: torch.Tensor, side: int) -> torch.Tensor:
    """Paste centred on a black ``side``² canvas (PIL ``paste`` offsets: floor of half the margin)."""
    h, w = x.shape[-2:]
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top))


def to_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` to float ``(N, C, H, W)`` in 0–255."""
    x = images.float()
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def images_nchw_int(images: torch.Tensor) -> torch.Tensor:
    x = images.to(torch.int64)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def preprocess(images: torch.Tensor, spec: Preprocess, *, min_source_size: int | None = None) -> torch.Tensor:
    """uint8 batch → normalised float NCHW input of the backbone, on ``images.device``.

    ``min_source_size`` is the protocol's source upsampling (the study: 28 → 32 px, bilinear).
    """
    x = to_nchw(images)
    if spec.grayscale and x.shape[1] == 3:
        # exact integer arithmetic, as PIL's convert("L") on uint8 pixels
        weights = torch.tensor(LUMA_FIXED, dtype=torch.int64, device=x.device).view(1, 3, 1, 1)
        x = ((images_nchw_int(images) * weights).sum(1, keepdim=True) + 32768).div(65536, rounding_mode="floor").float()
    if min_source_size and x.shape[-1] < min_source_size:
        x = _resize(x, (min_source_size, min_source_size), "bilinear")
    h, w = x.shape[-2:]
    if spec.input_size is None:
        x = _resize(x, (max(spec.min_size, h), max(spec.min_size, w)), spec.interpolation)
    elif spec.resize == "resize":
        x = _resize(x, (spec.input_size, spec.input_size), spec.interpolation)
    elif spec.resize == "resize_crop":
        short = min(h, w)
        size = (round(h * spec.input_size / short), round(w * spec.input_size / short))
        x = _center_crop(_resize(x, size, spec.interpolation), spec.input_size)
    else:  # pad
        x = _pad_center(x, max(spec.input_size, h, w))
        x = _center_crop(_resize(x, (spec.input_size,) * 2, spec.interpolation), spec.input_size)
    mean = x.new_tensor(spec.mean).view(1, -1, 1, 1) * 255.0
    std = x.new_tensor(spec.std).view(1, -1, 1, 1) * 255.0
    x = (x - mean) / std
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


#: Smallest side at which CPU inputs go channels_last (NHWC). Measured with oneDNN (Xeon, AVX-512): at
#: 128-224 px NHWC runs ResNet-50, VGG19, DenseNet-121 and EfficientNetV2-M 12-43 % faster; at 32 px
#: ResNet-50 and VGG19 run 11-23 % faster in NCHW (DenseNet-121 25 % slower); at 64 px it is even or better.
CPU_CHANNELS_LAST_MIN = 64


def input_layout(x: torch.Tensor) -> torch.memory_format:
    """The backbone input's memory format: channels_last on GPUs, and on CPUs from ``CPU_CHANNELS_LAST_MIN`` px.

    Deliberate, so that gray (expanded) and RGB (permuted NHWC) sources run in the same layout.
    """
    if x.ndim != 4:
        return torch.contiguous_format
    if x.device.type == "cuda" or min(x.shape[-2:]) >= CPU_CHANNELS_LAST_MIN:
        return torch.channels_last
    return torch.contiguous_format


def volume_slices(volumes: torch.Tensor, planes: str) -> torch.Tensor:
    """``(B, D, H, W)`` → ``(B, S, h, w)`` slices: the first axis, or all three (cubic volumes)."""
    if planes == "axial":
        return volumes
    return torch.cat([volumes, volumes.permute(0, 2, 1, 3), volumes.permute(0, 3, 1, 2)], dim=1)


class EmbeddingModule(L.LightningModule):
    """Inference-only: ``predict_step`` turns a uint8 batch into ``(index, embedding)``.

    Volumes (with a ``volume`` spec) become one batch of slices, embedded in chunks of at
    most ``max_forward_batch`` images, and are reassembled per volume on the device. A CUDA
    out-of-memory error halves the chunk and retries, down to ``min_forward_batch``; the
    smaller chunk is kept for the rest of the run (eval mode: the embeddings do not depend on it).
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        min_source_size: int | None = None,
        volume: VolumeSpec | None = None,
        max_forward_batch: int = 512,
        min_forward_batch: int = 1,
    ):
        super().__init__()
        self.backbone = backbone.net
        self.spec = backbone.preprocess
        self.min_source_size = min_source_size
        self.volume = volume
        self.max_forward_batch = max_forward_batch
        self.min_forward_batch = min_forward_batch

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        faults.forward(len(images))
        x = preprocess(images, self.spec, min_source_size=self.min_source_size)
        return self.backbone(x.contiguous(memory_format=input_layout(x))).float()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        outs, start = [], 0
        while start < len(images):
            chunk = images[start : start + self.max_forward_batch]
            try:
                outs.append(self._forward(chunk))
                start += len(chunk)
                continue
            except torch.cuda.OutOfMemoryError as exc:
                self._shrink(len(chunk), exc)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # outside the handler: the failed pass's tensors are released by now
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _shrink(self, failed: int, exc: BaseException) -> None:
        """Halve the forward chunk after an out-of-memory error, or give up at the floor."""
        if failed <= self.min_forward_batch:
            raise CbmirError(
                f"CUDA out of memory at a forward pass of {failed} images (min_forward_batch="
                f"{self.min_forward_batch}): lower batch_size, run a smaller size, or use precision=bf16-mixed"
            ) from exc
        self.max_forward_batch = max(self.min_forward_batch, failed // 2)
        log.warning("out of memory at a forward pass of %d images; retrying with %d", failed, self.max_forward_batch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.volume is None:
            return self.embed_images(images)
        slices = volume_slices(images, self.volume.planes)  # (B, S, h, w)
        b, s = slices.shape[:2]
        emb = self.embed_images(slices.reshape(b * s, *slices.shape[2:])).view(b, s, -1)
        if self.volume.aggregate == "concat":
            return emb.reshape(b, -1)
        return emb.mean(1) if self.volume.aggregate == "mean" else emb.amax(1)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        index, images, _labels = batch
        return {"index": index, "embedding": self(images)}
