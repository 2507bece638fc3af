"""Patient data in DICOM headers: which identifying attributes the source files carry, and burned-in text.

The attribute list is the DICOM standard's Basic Application Level Confidentiality Profile (PS3.15
table E.1-1) as the ``dicom-anonymizer`` package maintains it (its newest edition's ``ALL_TAGS``),
not a hand-typed list. cbmir copies no header text into an index; this scan only tells the user
what the sources carry, as attribute names with counts of files, never values.

Files whose pixels may show text (``BurnedInAnnotation`` = YES, or a secondary capture or
ultrasound SOP class / ``US`` modality not marked ``NO``) are withheld from thumbnails and stored
pixels unless ``index.allow_burned_in=true``; their vectors are still indexed.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cbmir.data.decode import file_format

#: The dicom-anonymizer edition of PS3.15 E.1-1 used (the newest it ships).
PROFILE_EDITION = "dicomfields_2026c"
#: SOP classes whose images commonly carry burned-in text, by the name pydicom gives their UID.
BURNED_IN_CLASSES = ("Secondary Capture", "Ultrasound")
BURNED_IN_MODALITIES = ("US",)


@lru_cache(maxsize=1)
def _profile() -> tuple[frozenset[int], tuple[tuple[int, int, int, int], ...]]:
    """Exact tags and masked (repeating-group) tags of the confidentiality profile."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    exact, masked = set(), []
    for entry in dicom_anonymization_database_selector(PROFILE_EDITION)["ALL_TAGS"]:
        if len(entry) == 2:
            exact.add((entry[0] << 16) | entry[1])
        else:
            masked.append(tuple(entry))
    return frozenset(exact), tuple(masked)


def identifying(tag: int) -> bool:
    """Whether the profile lists ``tag`` (or its repeating group) for removal or replacement."""
    exact, masked = _profile()
    if tag in exact:
        return True
    group, element = tag >> 16, tag & 0xFFFF
    return any((group & gm) == g and (element & em) == e for g, e, gm, em in masked)


def burned_in_reason(ds) -> str:
    """Why a file's pixels may show text (``""`` when they should not)."""
    from pydicom.uid import UID

    flag = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation = YES"
    if flag == "NO":
        return ""
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    name = UID(str(sop)).name if sop else ""
    if any(kind in name for kind in BURNED_IN_CLASSES):
        return f"a {name} (commonly carries burned-in text)"
    if str(ds.get("Modality", "")).strip() in BURNED_IN_MODALITIES:
        return "modality US (commonly carries burned-in text)"
    return ""


@dataclass
class HeaderScan:
    """Per attribute name, how many DICOM files carry it; the files withheld for burned-in text."""

    attributes: Counter = field(default_factory=Counter)
    dicom_files: int = 0
    burned_in: dict[str, str] = field(default_factory=dict)  # path -> reason

    def summary(self) -> dict:
        return {
            "profile": f"DICOM PS3.15 E.1-1 (dicom-anonymizer {PROFILE_EDITION})",
            "dicom_files": self.dicom_files,
            "identifying_attributes": dict(sorted(self.attributes.items())),
            "burned_in_files": len(self.burned_in),
        }

    def merge(self, other: dict) -> dict:
        """This scan added to an earlier summary (an index's manifest, grown by an add)."""
        counts = Counter(other.get("identifying_attributes", {})) + self.attributes
        return {
            **self.summary(),
            "dicom_files": other.get("dicom_files", 0) + self.dicom_files,
            "identifying_attributes": dict(sorted(counts.items())),
            "burned_in_files": other.get("burned_in_files", 0) + len(self.burned_in),
        }


def scan_headers(paths: Iterable[str | Path]) -> HeaderScan:
    """Read the headers (never the pixels) of the DICOM files among ``paths``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = HeaderScan()
    for path in paths:
        if file_format(path) != "dicom":
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # the decoder reports an unreadable file in its own words
        out.dicom_files += 1
        names = set()
        for element in ds.iterall():
            if identifying(int(element.tag)):
                names.add(element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})")
        out.attributes.update(names)
        if reason := burned_in_reason(ds):
            out.burned_in[str(path)] = reason
    return out


def describe(summary: dict) -> str:
    """One log line: the attribute names and counts (never values)."""
    attrs = summary.get("identifying_attributes") or {}
    if not summary.get("dicom_files"):
        return "no DICOM headers among the sources"
    listed = ", ".join(f"{name} ({count})" for name, count in attrs.items()) or "none"
    return (
        f"{summary['dicom_files']} DICOM file(s) carry identifying attributes of {summary['profile']}: {listed} "
        f"(none is copied into the index); {summary.get('burned_in_files', 0)} may show burned-in text"
    )
