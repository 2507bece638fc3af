"""DICOM files through pydicom, with the header's size checked before any pixel data is decoded or inflated.

The modality LUT / rescale slope and intercept first, then the configured window, else the file's own VOI LUT
or window, else min-max; MONOCHROME1 is inverted; PALETTE COLOR is rendered to RGB through the file's colour
LUT (as pydicom renders it); YBR is converted to RGB by pydicom; an enhanced multi-frame file takes rescale
and window per frame from its functional groups; a multi-frame file is a volume.

The file's Rows × Columns × frames is compared with ``decode.max_pixels`` / ``decode.max_voxels`` before
``pixel_array`` (an RLE or JPEG stream of a few KB may claim gigabytes), and an uncompressed file whose pixel
data is shorter than its header declares is called truncated. A deflated dataset is inflated in steps: its
header first, then no more than the pixel data that header declares. pydicom's warnings are captured and
logged, never printed raw.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from io import BytesIO

import numpy as np

from cbmir.data.pixels import BadFile, Decoded, DecodeLimits, check_size, reason, to_uint8, window_bounds

log = logging.getLogger(__name__)

#: Inflated bytes of a deflated dataset read before its pixel data (the header and its sequences).
DEFLATED_HEADER = 8 << 20
PIXEL_DATA = 0x7FE00010
DEFLATED_UID = b"1.2.840.10008.1.2.1.99"
logging.getLogger("pydicom").propagate = False  # its warn_and_log duplicates warnings, which are captured below


def _no_pixels(tag, vr, length) -> bool:
    return tag == PIXEL_DATA


def _read_deflated(data: bytes, name: str, limits: DecodeLimits):
    """A deflated dataset, inflated header first, then only as far as the size its header declares.

    pydicom's ``dcmread`` inflates the whole stream before it reads a tag, so the file meta group is read
    here and the rest inflated in two bounded steps. A dataset of another transfer syntax is read as usual.
    """
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.pixels.utils import get_expected_length
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = DicomBytesIO(data)
    preamble = read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(BytesIO(data))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = inflater.decompress(data[fp.tell() :], DEFLATED_HEADER)
    header = read_dataset(DicomBytesIO(body), False, True, stop_when=_no_pixels)
    _check_header(header, name, limits, header_only=True)
    budget = (get_expected_length(header) if "Rows" in header else 0) + (1 << 20)  # pixels and trailing elements
    body = b"".join((body, inflater.decompress(inflater.unconsumed_tail, budget)))
    if not inflater.eof:
        raise BadFile(
            f"{name} inflates to more than the {header.get('Rows')} × {header.get('Columns')} pixels "
            "its header declares: refused before inflating the rest"
        )
    return FileDataset(name, read_dataset(DicomBytesIO(body), False, True), preamble, meta, False, True)


def _read(data: bytes, name: str, limits: DecodeLimits):
    import pydicom

    if len(data) < 132 or data[128:132] != b"DICM":
        raise BadFile("not a DICOM file: no 128-byte preamble with the 'DICM' marker (DICOM Part 10) at its start")
    if DEFLATED_UID in data[:4096]:  # the file meta group names the transfer syntax near the start
        return _read_deflated(data, name, limits)
    return pydicom.dcmread(BytesIO(data))


def _check_header(ds, name: str, limits: DecodeLimits, *, header_only: bool = False) -> None:
    """Refuse a header that lacks the image module or claims more pixels than the caps allow."""
    if not header_only and "PixelData" not in ds:
        return
    if header_only and "Rows" not in ds:
        return
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) in (None, "")]
    if missing:
        raise BadFile(f"a DICOM image without {', '.join(missing)} in its header: its pixels cannot be read")
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.BitsAllocated)
    if min(rows, columns, frames, samples, bits) < 1:
        raise BadFile(f"a DICOM header with {rows} rows, {columns} columns, {frames} frames: not an image")
    claimed = (frames, rows, columns) if frames > 1 else (rows, columns)
    detail = f"{samples} sample(s) of {bits} bits ({_size(rows * columns * frames * samples * bits // 8)} decoded)"
    check_size(name, claimed, limits, volume=frames > 1, detail=detail)


def _without_pixels(ds) -> str:
    """Why a file has no pixel data: cut off before them (an image header or image class), or not an image."""
    sop = ds.get("SOPClassUID") or ds.get("file_meta", {}).get("MediaStorageSOPClassUID")
    kind = getattr(sop, "name", str(sop or ""))
    if "Rows" in ds or "Image Storage" in kind:
        return f"a truncated DICOM file: it ends before its pixel data (its header describes {kind or 'an image'})"
    return "a DICOM file without pixel data (a report, structured report or presentation state?)"


def _size(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def _check_native_length(ds) -> None:
    """An uncompressed file whose pixel data is shorter than its header declares was cut off."""
    from pydicom.pixels.utils import get_expected_length

    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_compressed or "PixelData" not in ds:
        return
    expected, held = get_expected_length(ds), len(ds.PixelData)
    if held < expected:
        raise BadFile(
            f"a truncated DICOM file: its pixel data holds {held} of the {expected} bytes its header declares"
        )


def _frame_item(ds, frame: int, sequence: str):
    """The functional-group item ``sequence`` of ``frame``: per-frame first, then shared, else None."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and len(seq) > i and seq[i].get(sequence):
            return seq[i].get(sequence)[0]
    return None


def _per_frame(ds, arr: np.ndarray, window: tuple[float, float] | None) -> np.ndarray | None:
    """Enhanced multi-frame: each frame rescaled and windowed by its own functional groups (None: there are none)."""
    from pydicom.dataset import Dataset

    frames = arr if arr.ndim == 3 else arr[None]
    rescales = [_frame_item(ds, i, "PixelValueTransformationSequence") for i in range(len(frames))]
    windows = [_frame_item(ds, i, "FrameVOILUTSequence") for i in range(len(frames))]
    if not any(rescales) and not any(windows):
        return None
    out = np.empty(frames.shape, dtype=np.uint8)
    for i, frame in enumerate(frames):
        item = Dataset()
        for source in (ds, rescales[i], windows[i]):  # top level first, the frame's own groups override
            for key in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction"):
                if source is not None and source.get(key) is not None:
                    setattr(item, key, source.get(key))
        for key in ("PixelRepresentation", "BitsStored", "BitsAllocated", "PhotometricInterpretation"):
            if ds.get(key) is not None:
                setattr(item, key, ds.get(key))
        out[i] = _to_gray(frame, item, window)
    return out if arr.ndim == 3 else out[0]


def voi_range(ds) -> tuple[float, float]:
    """The output range of pydicom's ``apply_voi_lut`` on this file (its LUT's bit depth, or the window's limits)."""
    from pydicom.pixels import apply_windowing

    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        return 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    low, high = apply_windowing(np.array([-1e30, 1e30]), ds)
    return float(low), float(high)


def _to_gray(arr: np.ndarray, ds, window: tuple[float, float] | None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    if window is not None:
        return to_uint8(values, *window_bounds(window))
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        return to_uint8(apply_voi_lut(values, ds, prefer_lut=True), *voi_range(ds))
    return to_uint8(values)


def _palette_rgb(arr: np.ndarray, ds) -> np.ndarray:
    """PALETTE COLOR: the indices through the file's red, green and blue LUTs (pydicom), their top 8 bits kept.

    A 16-bit LUT entry holds an 8-bit colour as ``v × 256`` (or ``v × 257``): the top byte is ``v`` exactly.
    """
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(arr, ds)
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    bits = int(descriptor[2]) if descriptor else 8 * rgb.dtype.itemsize
    return (rgb >> max(bits - 8, 0)).astype(np.uint8)


def _render(ds, arr: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        return _palette_rgb(arr, ds)
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour: pydicom has converted YBR to RGB already
        return arr if arr.dtype == np.uint8 else to_uint8(arr)
    pixels = _per_frame(ds, arr, window)
    if pixels is None:
        pixels = _to_gray(arr, ds, window)
    if photometric == "MONOCHROME1":  # low values are white: invert to MONOCHROME2
        pixels = 255 - pixels
    return pixels


def read_dicom(
    data: bytes,
    window: tuple[float, float] | None = None,
    *,
    name: str = "the DICOM file",
    limits: DecodeLimits | None = None,
    dims: int | None = None,
) -> Decoded:
    """One DICOM file: a 2D image, or a volume ``(frames, H, W)`` when it holds several frames."""
    limits = limits or DecodeLimits()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decoded = _decode(data, window, name, limits, dims)
        except (BadFile, KeyboardInterrupt, SystemExit):
            raise
        except MemoryError:
            raise BadFile(f"{name} is too large to decode in this process's memory") from None
        except BaseException as exc:  # pydicom parses elements when first read: a damaged one fails anywhere
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            raise BadFile(f"a damaged DICOM file: an element of its header cannot be read ({reason(exc)})") from None
        finally:
            for w in caught:
                log.info("%s: pydicom: %s", name, reason(w.message))
    return decoded


def _decode(data: bytes, window, name: str, limits: DecodeLimits, dims: int | None) -> Decoded:
    try:
        ds = _read(data, name, limits)
    except BadFile:
        raise
    except (EOFError, zlib.error) as exc:
        raise BadFile(f"a truncated DICOM file: its data ends early ({reason(exc)})") from None
    except Exception as exc:  # InvalidDicomError, struct.error, ValueError, KeyError, … on a damaged header
        raise BadFile(f"not a readable DICOM file: its header is damaged ({reason(exc)})") from None
    if "PixelData" not in ds:
        raise BadFile(_without_pixels(ds))
    _check_header(ds, name, limits)
    frames = int(ds.get("NumberOfFrames") or 1)
    if dims == 2 and frames > 1:
        raise BadFile(
            f"a volume of {frames} frames of {ds.Rows} × {ds.Columns} where 2D images are expected "
            "(a 2D dataset or index)"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID")
    _check_native_length(ds)
    try:
        arr = ds.pixel_array
        pixels = _render(ds, arr, window)
    except MemoryError:
        raise BadFile(f"{name} is too large to decode in this process's memory") from None
    except BaseException as exc:  # no plugin for the syntax, corrupt data; a Rust decoder's panic is a BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        label = getattr(syntax, "name", syntax) or "an unknown transfer syntax"
        raise BadFile(f"its DICOM pixel data ({label}) cannot be decoded: {reason(exc)}") from None
    shape = tuple(int(n) for n in arr.shape)
    spacing = None
    if frames > 1:
        rows = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
        depth = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        spacing = (depth, *rows)
    return Decoded(pixels, shape, spacing)
