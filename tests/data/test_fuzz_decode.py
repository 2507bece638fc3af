"""Seeded byte mutations of real files (pydicom's, scikit-image's and nibabel's own test files) through decode().

Asserts what the issue asks of the one decoding entry point: only cbmir's :class:`BadFile` escapes, no case
runs longer than :data:`CASE_SECONDS` (an interval timer interrupts a hang), and the process's peak RSS grows
by less than :data:`BOUND_MB` over the whole run. Hypothesis is not installed; the mutations are seeded numpy
draws (flipped bytes, header fields overwritten with huge or zero values, truncation, insertion, deletion,
a duplicated span), so a failure names the file and seed that reproduce it.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np

from cbmir.data.decode import BadFile, DecodeLimits, DecodeSpec, decode
from tests.helpers.memory import peak_rss_growth

CASES_PER_FILE = 40
CASE_SECONDS = 5
BOUND_MB = 250
#: Small caps: a mutated header may claim anything up to them and be decoded.
LIMITS = DecodeLimits(max_pixels=2_000_000, max_voxels=8_000_000)
DICOM = [
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "examples_palette.dcm",
    "JPEG2000.dcm",
]
IMAGES = ["chessboard_RGB.png", "text.png", "multipage.tif", "retina.jpg"]
NIFTI = ["anatomical.nii", "standard.nii.gz", "example_nifti2.nii.gz"]


def _seeds() -> list[tuple[str, Path]]:
    import nibabel
    import skimage
    from pydicom.data import get_testdata_file

    out = [(name, Path(get_testdata_file(name))) for name in DICOM]
    out += [(name, Path(skimage.__file__).parent / "data" / name) for name in IMAGES]
    out += [(name, Path(nibabel.__file__).parent / "tests" / "data" / name) for name in NIFTI]
    return out


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three seeded mutations, mostly in the first 2 KB where the headers are."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        head = min(len(b), 2048) if rng.random() < 0.7 else len(b)
        at = int(rng.integers(0, max(head, 1)))
        kind = rng.integers(0, 6)
        if kind == 0:
            for i in rng.integers(0, max(head, 1), int(rng.integers(1, 9))):
                b[int(i)] = int(rng.integers(0, 256))
        elif kind == 1:  # a size or length field overwritten with a huge, negative or zero value
            value = [b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\xff\xff", b"\x00\x80"][
                rng.integers(0, 5)
            ]
            b[at : at + len(value)] = value
        elif kind == 2:
            del b[int(rng.integers(1, max(len(b), 2))) :]
        elif kind == 3:
            b[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif kind == 4:
            del b[at : at + int(rng.integers(1, 64))]
        else:
            span = b[at : at + int(rng.integers(1, 512))]
            b[at:at] = span
    return bytes(b)


def _alarm(signum, frame):
    raise TimeoutError


def test_mutated_real_files_raise_only_badfile_in_bounded_time_and_memory(tmp_path):
    seeds = _seeds()
    assert all(path.is_file() for _, path in seeds)
    failures, outcomes = [], {"decoded": 0, "refused": 0}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        with peak_rss_growth() as peak:
            for name, source in seeds:
                original = source.read_bytes()
                for seed in range(CASES_PER_FILE):
                    data = mutate(original, np.random.default_rng([seed, len(original)]))
                    path = tmp_path / name  # the NIfTI reader takes a path: the mutated bytes are written there
                    path.write_bytes(data)
                    dims = 3 if name.endswith((".nii", ".nii.gz")) or name in ("rtdose.dcm",) else 2
                    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
                    try:
                        decode(path, data, DecodeSpec(size=16, dims=dims), limits=LIMITS)
                        outcomes["decoded"] += 1
                    except BadFile as exc:
                        outcomes["refused"] += 1
                        text = str(exc)
                        if not text or " at 0x" in text or "force=True" in text or str(tmp_path) in text:
                            failures.append(f"{name} seed {seed}: message {text!r}")
                    except TimeoutError:
                        failures.append(f"{name} seed {seed}: still decoding after {CASE_SECONDS} s")
                    except Exception as exc:  # noqa: BLE001 - the point of the test
                        failures.append(f"{name} seed {seed}: {type(exc).__name__}: {exc}")
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not failures, "\n".join(failures)
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0  # both paths were exercised
    assert peak["mb"] < BOUND_MB, f"peak RSS grew {peak['mb']:.0f} MB over the fuzz run"
