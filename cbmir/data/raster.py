"""PNG, JPEG, TIFF and BMP through Pillow, with the header's size checked before any pixel is decoded.

8-bit gray and RGB are kept as they are; palette images are expanded; alpha is composited over black;
16-bit (and 32-bit/float) images are mapped to 8 bits by ``dataset.window`` when one is configured, else by
their own min-max. ``Image.open`` reads only the header, so ``im.size`` is compared with
``decode.max_pixels`` before ``load()``; Pillow's own decompression-bomb guard is reported in the same words.
"""

from __future__ import annotations

import re
import warnings
from io import BytesIO

import numpy as np

from cbmir.data.pixels import BadFile, Decoded, DecodeLimits, check_size, reason, to_uint8, window_bounds


def _over_black(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over a black background (MedMNIST's backgrounds are dark), rounded."""
    a = alpha.astype(np.uint32)
    if color.ndim == 3:
        a = a[..., None]
    return ((color.astype(np.uint32) * a + 127) // 255).astype(np.uint8)


def _to_array(im) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    return np.array(im), im.mode


def read_pillow(
    data: bytes,
    window: tuple[float, float] | None = None,
    *,
    name: str = "the image",
    limits: DecodeLimits | None = None,
) -> Decoded:
    """PNG/JPEG/TIFF/BMP (first frame of a multi-page file) to gray or RGB uint8."""
    from PIL import Image

    limits = limits or DecodeLimits()
    try:
        with warnings.catch_warnings(record=True):  # the size is checked below, against cbmir's own cap
            warnings.simplefilter("always")
            with Image.open(BytesIO(data)) as im:
                check_size(name, (im.height, im.width), limits, volume=False, detail=f"{im.mode} {im.format}")
                im.load()
                shape = (im.height, im.width)
                arr, mode = _to_array(im)
    except BadFile:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard (2 × Image.MAX_IMAGE_PIXELS) came first
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} px" if claimed else "more pixels than Pillow decodes"
        raise BadFile(
            f"{name} claims {size}, over decode.max_pixels={limits.max_pixels} and Pillow's decompression-bomb "
            f"limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,} px: refused before decoding"
        ) from None
    except MemoryError:
        raise BadFile(f"{name} is too large to decode in this process's memory") from None
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, zlib.error, …
        text = reason(exc)
        if "cannot identify image file" in text:
            raise BadFile("not a readable image (no PNG, JPEG, TIFF or BMP header)") from None
        if "truncated" in text.lower() or "broken data stream" in text:
            raise BadFile(f"a truncated or damaged image ({text})") from None
        raise BadFile(f"not a readable image ({text})") from None
    if mode in ("LA", "RGBA"):
        arr = _over_black(arr[..., :-1] if mode == "RGBA" else arr[..., 0], arr[..., -1])
    elif arr.dtype != np.uint8:  # I;16*, I, F: more than 8 bits
        arr = to_uint8(arr, *window_bounds(window))
    if arr.ndim == 3:
        shape = (*shape, arr.shape[-1])
    return Decoded(arr, shape)
