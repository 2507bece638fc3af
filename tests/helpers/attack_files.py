"""Hostile image files, built in a few MB of memory: tiny on disk, enormous once decoded.

Each builder deflates zeros by repeating one compressed block (or writes a header that lies), so the test
never holds the decoded size itself: the RLE DICOM claiming 65535², the deflated DICOM of zeros, the PNG bombs,
the NIfTI of zeros.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np

CHUNK = 1 << 22


def raw_deflate(prefix: bytes, zeros: int) -> bytes:
    """Raw deflate of ``prefix`` + ``zeros`` zero bytes, built by repeating one compressed block.

    After ``Z_FULL_FLUSH`` the compressor starts afresh, so a block of zeros compresses to the same bytes every
    time: 900 MB of zeros cost one 4 MB compression instead of three seconds.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(CHUNK)) + c.flush(zlib.Z_FULL_FLUSH)
    rest = c.compress(bytes(zeros % CHUNK)) + c.flush()
    return head + block * (zeros // CHUNK) + rest


def _checksum(function, prefix: bytes, zeros: int, start: int) -> int:
    value = function(prefix, start)
    block = bytes(CHUNK)
    for _ in range(zeros // CHUNK):
        value = function(block, value)
    return function(bytes(zeros % CHUNK), value)


def _image_dataset(rows: int, columns: int, bits: int = 16, samples: int = 1):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def rle_dicom_claiming(path: Path, side: int = 65535, size: int = 7800) -> Path:
    """An RLE Lossless DICOM whose header claims ``side`` × ``side`` 16-bit pixels, ``size`` bytes on disk."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = _image_dataset(side, side)
    ds.file_meta.TransferSyntaxUID = RLELossless
    header = struct.pack("<16I", 2, 64, 64 + 2, *([0] * 13))
    runs = bytes([0x81, 0]) * ((size - 1200) // 2)  # "repeat 0 128 times", over and over
    ds.PixelData = encapsulate([header + runs])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def deflated_dicom_of_zeros(path: Path, side: int = 8192, claimed: int | None = None) -> Path:
    """A Deflated Explicit VR DICOM of ``side``² 16-bit zeros; ``claimed`` makes its header claim another side."""
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    claimed = claimed or side
    ds = _image_dataset(claimed, claimed)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = BytesIO()
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(body)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    n = side * side * 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n)
    deflated = raw_deflate(body.getvalue() + pixel_header, n)
    meta = BytesIO()
    mfp = DicomFileLike(meta)
    mfp.is_little_endian, mfp.is_implicit_VR = True, False
    write_file_meta_info(mfp, ds.file_meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + deflated)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_of_zeros(path: Path, width: int, height: int, rgb: bool = False) -> Path:
    """A PNG of black pixels (gray or RGB 8-bit), compressed row by row: a decompression bomb for large sides."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)
    n = height * (1 + width * (3 if rgb else 1))  # each row: filter byte 0, then its samples, all zero
    stream = b"\x78\xda" + raw_deflate(b"", n) + struct.pack(">I", _checksum(zlib.adler32, b"", n, 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b""))
    return path


def nifti_of_zeros(path: Path, side: int = 512, dtype=np.float32) -> Path:
    """A gzipped NIfTI-1 volume ``side``³ of zeros, streamed (never held in memory)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(dtype)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    n = side**3 * np.dtype(dtype).itemsize
    prefix = header.binaryblock + b"\0" * 4
    crc = _checksum(zlib.crc32, prefix, n, 0)
    gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw_deflate(prefix, n)
    path.write_bytes(gz + struct.pack("<II", crc, (len(prefix) + n) & 0xFFFFFFFF))
    return path
