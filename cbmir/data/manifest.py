"""A CSV or Parquet manifest: one row per file.

Columns: ``path`` (relative to the manifest's folder), ``label`` (multi-label as ``a|b``),
optional ``split`` (train | val | test) and ``group`` (patient or study id); every other
column is kept as metadata and copied into the ingested split's table. A path that leaves
the manifest's folder (``../``) or an absolute path (unless ``dataset.allow_absolute=true``),
a link leaving that folder, a missing file or a link loop, an empty label and a file listed twice (also
under another spelling, ``img/../img/a.dcm``, or through a link) are bad rows, named with their row.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from cbmir.data.entries import (
    LABEL_SEPARATOR,
    Entry,
    Listing,
    check_split_names,
    file_problem,
    inside,
    lexically_inside,
    parse_labels,
)
from cbmir.errors import ConfigError

REQUIRED = ("path", "label")
OPTIONAL = ("split", "group")


def read_table(path: Path):
    """The manifest as a pandas DataFrame of strings (empty cells as ``""``)."""
    import pandas as pd

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            return frame.astype(object).where(frame.notna(), "").astype(str)
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except ImportError as exc:
        raise ConfigError(f"reading {path.name} needs a Parquet engine: pip install pyarrow ({exc})") from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"dataset.path={path} cannot be read as a manifest: {exc}") from exc


def _is_absolute(text: str) -> bool:
    return PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()


def read_manifest(path: str | Path, *, allow_absolute: bool = False, series: bool = False) -> Listing:
    """List a manifest's rows; rows that cannot be items are returned as bad, with the reason."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"dataset.path={path} is not a file")
    frame = read_table(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks the column(s) {missing}; it has {list(frame.columns)}")
    root = path.parent.resolve()
    extra_columns = tuple(c for c in frame.columns if c not in REQUIRED + OPTIONAL)
    multilabel = bool(frame["label"].str.contains(LABEL_SEPARATOR, regex=False).any())
    entries: list[Entry] = []
    bad: dict[str, str] = {}
    seen: dict[str, tuple[int, str]] = {}  # real path -> (row, path as listed)
    for row, record in enumerate(frame.to_dict("records"), start=2):  # row 1 is the header
        source = str(record["path"]).strip()
        where = f"{source} (row {row})"
        if not source:
            bad[f"(row {row})"] = "an empty path"
            continue
        if _is_absolute(source):
            if not allow_absolute:
                bad[where] = "an absolute path (set dataset.allow_absolute=true to allow them)"
                continue
            file = Path(source)
        else:
            file = root / source
            if not lexically_inside(str(root), source):
                bad[where] = f"a path that leaves the manifest's folder {root}"
                continue
        labels = parse_labels(str(record["label"]), multilabel)
        real = os.path.realpath(file)
        problem = None if series and os.path.isdir(file) else file_problem(file)  # 3D: a folder row is a series
        if not labels:
            bad[where] = "no label"
        elif problem:
            bad[where] = problem
        elif not allow_absolute and not inside(root, real):
            bad[where] = f"a link that leaves the manifest's folder {root} (set dataset.allow_absolute=true to allow)"
        elif real in seen:
            bad[where] = f"the same file as row {seen[real][0]} ({seen[real][1]}): listed twice"
        else:
            seen[real] = (row, source)
            split = str(record.get("split", "")).strip().lower() or None
            group = str(record.get("group", "")).strip() or None
            extra = {c: str(record[c]) for c in extra_columns}
            entries.append(Entry(file, source, labels, split, group, extra))
    check_split_names(entries, str(path))
    return Listing(entries, bad, root, multilabel=multilabel, extra_columns=extra_columns)
