"""Query an index: decode an image file, embed it with the index's own model, search, suggest a label.

:class:`QueryEmbedder` rebuilds the backbone from the manifest's model config (seeded as the cell
was, so random weights come out the same) and runs the extraction's own module
(:class:`cbmir.cell.extract.EmbeddingModule`: device-side preprocessing, 3D slicing), so a query image
is embedded exactly as the evaluated items were. It refuses a backbone whose weights identity is
not the index's, and one that does not embed the index's probe item back to its stored vector.
Files are decoded by :func:`cbmir.data.decode.decode` at the index's size, fit and channels.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.data.decode import DICOM_SUFFIXES, NIFTI_SUFFIXES, PILLOW_SUFFIXES, BadFile, DecodeSpec, decode, file_format
from cbmir.data.pixels import DecodeLimits
from cbmir.errors import ConfigError
from cbmir.index.files import IndexFolder, IndexMismatchError, open_index

log = logging.getLogger(__name__)

#: Relative L2 error allowed between a reopened model's probe embedding and the stored one (fp32 on CPU
#: reproduces it to ~1e-6; a GPU or bf16 autocast to ~1e-3-1e-2; another model or seed is off by O(1)).
PROBE_TOLERANCE_FP32 = 1e-3
PROBE_TOLERANCE_REDUCED = 5e-2
#: Leading bytes of the formats an upload may be without a telling name.
MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def upload_name(name: str, data: bytes) -> str:
    """A name whose suffix says the format: the given one when cbmir reads it, else sniffed from the bytes.

    Never a path: the decoder must not look at a local file of the uploaded name.
    """
    base = Path(name or "upload").name
    lower = base.lower()
    if lower.endswith(PILLOW_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES):
        return base
    if data[128:132] == b"DICM":
        return base + ".dcm"
    for magic, suffix in MAGIC:
        if data.startswith(magic):
            return base + suffix
    raise BadFile("not a supported image (PNG, JPEG, TIFF, BMP, DICOM, NIfTI)")


#: Item columns a query may filter on (``where``).
FILTER_COLUMNS = ("label", "split", "group", "source")
#: Split names a filter also accepts (the roles): database = train, query = test.
SPLIT_ALIASES = {"database": "train", "query": "test"}


class FilterError(ConfigError):
    """A ``where`` filter on an unknown column or a value no item holds."""


def parse_where(pairs: Sequence[str]) -> dict[str, list[str]]:
    """``["label=benign", "split=database", "label=normal"]`` → ``{"label": ["benign", "normal"], "split": [...]}``."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep or not column.strip() or not value.strip():
            raise FilterError(f"--where {pair}: expected COLUMN=VALUE (columns: {', '.join(FILTER_COLUMNS)})")
        out.setdefault(column.strip(), []).append(value.strip())
    return out


class Columns:
    """The filterable columns as distinct values and one code per row: built once per opened index, so a
    filter costs a few vector operations per query, not a pass over every item's strings."""

    def __init__(self, items: list[dict[str, str]]):
        self.n = len(items)
        self.values: dict[str, np.ndarray] = {}
        self.codes: dict[str, np.ndarray] = {}
        for column in FILTER_COLUMNS:
            self.values[column], self.codes[column] = np.unique(
                np.array([it[column] for it in items], dtype=str), return_inverse=True
            )

    def allowed(self, where: Mapping[str, Sequence[str]] | None, class_names: dict | None) -> np.ndarray | None:
        """Rows passing every column's filter (a column's values are alternatives); None without filters.

        ``label`` takes the label index, the class name or the ``"0 benign"`` form; ``split`` also takes
        ``database`` / ``query``. A multi-label item passes a label filter when it holds any of the values.
        """
        if not where:
            return None
        mask = np.ones(self.n, dtype=bool)
        names = {v: k for k, v in (class_names or {}).items()}
        for column, values in where.items():
            if column not in FILTER_COLUMNS:
                raise FilterError(f"cannot filter on {column!r}: the columns are {', '.join(FILTER_COLUMNS)}")
            values = [values] if isinstance(values, str) else list(values)
            parts = [set(v.split(";")) if column == "label" else {v} for v in self.values[column]]
            held = set().union(*parts) if parts else set()
            accepted = set()
            for value in values:
                forms = {
                    value,
                    names.get(value, value),
                    SPLIT_ALIASES.get(value, value) if column == "split" else value,
                }
                if column == "label" and " " in value:
                    forms.add(value.split(" ", 1)[0])
                if not forms & held:
                    shown = ", ".join(sorted(held)[:12]) + (", …" if len(held) > 12 else "")
                    raise FilterError(f"no item has {column}={value} (values of {column}: {shown})")
                accepted |= forms & held
            codes = [i for i, p in enumerate(parts) if p & accepted]
            mask &= np.isin(self.codes[column], codes)
        return np.flatnonzero(mask)


def allowed_rows(
    items: list[dict[str, str]], where: Mapping[str, Sequence[str]] | None, class_names: dict | None
) -> np.ndarray | None:
    """:meth:`Columns.allowed` for a list of items (built on each call; a :class:`Retriever` keeps its own)."""
    return Columns(items).allowed(where, class_names)


class QueryEmbedder:
    """The index's backbone and preprocessing, ready to embed uint8 items shaped as the index's."""

    def __init__(self, manifest: dict[str, Any], *, model_config: dict | None = None, device: str | None = None):
        import lightning as L
        import torch
        from omegaconf import OmegaConf

        from cbmir.cell.extract import EmbeddingModule, VolumeSpec
        from cbmir.layout import model_id
        from cbmir.models import build_backbone

        self.manifest = manifest
        cfg_model = OmegaConf.create(model_config if model_config is not None else manifest["model_config"])
        L.seed_everything(manifest["seed"], verbose=False)  # as run_cell seeds before building the backbone
        backbone = build_backbone(cfg_model)
        if _canonical(backbone.identity) != _canonical(manifest["backbone"]):
            raise IndexMismatchError(
                f"this index holds embeddings of {manifest['model']} (weights {manifest['backbone']}); the query "
                f"model is {model_id({'model': cfg_model})} (weights {backbone.identity}). An index answers only "
                "queries embedded by its own model: build an index with the other model "
                "(python -m cbmir.index build model=...)."
            )
        volume = manifest.get("volume")
        self.volume = VolumeSpec(volume["aggregate"], volume["planes"]) if volume else None
        self.side = volume["side"] if volume else None
        self.module = EmbeddingModule(
            backbone, min_source_size=None if volume else manifest["min_source_size"], volume=self.volume
        )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module.to(self.device).eval()
        precision = manifest["precision"]
        self.autocast = (
            {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
            if self.device.type == "cuda"
            else None
        )
        # either side in bf16/fp16, or a GPU (TF32 convolutions) on one side: the looser bound
        reduced = self.device.type == "cuda" or precision != "32-true"
        self.tolerance = PROBE_TOLERANCE_REDUCED if reduced else PROBE_TOLERANCE_FP32
        d = manifest["decode"]
        window = tuple(d["window"]) if d.get("window") else None
        self.spec = DecodeSpec(int(manifest["size"]), int(d["dims"]), d["fit"], d["channels"], window)
        self._lock = threading.Lock()  # one forward pass at a time (a server's worker threads share the model)

    def embed(self, items: np.ndarray) -> np.ndarray:
        """uint8 items (as stored in the index) → float32 ``(B, d)``."""
        import torch

        x = torch.from_numpy(np.require(items, requirements=["C", "W"])).to(self.device)
        with self._lock, torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast("cuda", dtype=self.autocast):
                    out = self.module(x)
            else:
                out = self.module(x)
        return out.float().cpu().numpy()

    def check(self, probe: np.ndarray, stored: np.ndarray) -> None:
        """Refuse a model that does not embed the probe item back to its stored vector."""
        got = self.embed(np.asarray(probe)[None])[0]
        stored = np.asarray(stored, dtype=np.float32)
        error = float(np.linalg.norm(got - stored) / max(float(np.linalg.norm(stored)), 1e-12))
        if not error <= self.tolerance:
            raise IndexMismatchError(
                f"the rebuilt {self.manifest['model']} does not reproduce the index's embeddings (relative error "
                f"{error:.3g} > {self.tolerance:g} on item {self.manifest['probe_row']}): its weights, code or "
                "preprocessing changed since the build; rebuild the index"
            )

    def pixels(self, name: str, data: bytes | None, *, limits: DecodeLimits | None = None) -> np.ndarray:
        """A file's bytes → one item as the index stores them (``(s, s[, 3])`` image, or volume at the cell's side).

        ``data=None``: ``name`` is a local folder holding one DICOM series (``cbmir query IDX SERIES_FOLDER``).
        ``limits`` caps what the file's header may claim (the server passes its own, smaller ones).
        """
        if data is None:
            pixels = decode(name, None, self.spec, limits=limits).pixels
        elif file_format(name := upload_name(name, data)) == "nifti":  # nibabel reads from a path
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / name
                path.write_bytes(data)
                pixels = decode(path, data, self.spec, limits=limits).pixels
        else:
            pixels = decode(name, data, self.spec, limits=limits).pixels
        if self.side is not None and pixels.shape[0] != self.side:
            from cbmir.data.volumes import resize_volumes

            pixels = resize_volumes(pixels[None], self.side)[0]
        return pixels


@dataclass
class Answer:
    """One query's result: its pixels, the neighbours (nearest first), the label vote and the time taken."""

    name: str
    pixels: np.ndarray
    neighbours: list[dict[str, Any]]
    vote: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.name, "vote": self.vote, "neighbours": self.neighbours, "seconds": self.seconds}


def suggest_label(neighbour_labels: np.ndarray) -> tuple[int, int]:
    """The majority label among the neighbours (rows of ``(k, L)``): ``(rank of its nearest holder, votes)``.

    A tie goes to the tied label held by the nearest neighbour (the metrics' ``nearest`` rule).
    """
    _, inverse, counts = np.unique(neighbour_labels, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    tied = np.flatnonzero(counts == counts.max())
    rank = int(np.flatnonzero(np.isin(inverse, tied))[0])
    return rank, int(counts[inverse[rank]])


def search_rows(faiss_index: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None):
    """``faiss_index.search``, restricted inside FAISS to the ids ``allowed`` (None: every id)."""
    if allowed is None:
        return faiss_index.search(queries, k)
    import faiss

    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    return faiss_index.search(queries, k, params=faiss.SearchParameters(sel=selector))


class Retriever:
    """An opened index with its model: files or bytes in, ranked neighbours and a label suggestion out."""

    def __init__(
        self,
        folder: str | Path,
        *,
        model: str | None = None,
        model_config: dict | None = None,
        check: bool = True,
        device: str | None = None,
    ):
        self.index: IndexFolder = open_index(folder, check=check)
        m = self.index.manifest
        if model is not None and model != m["model"]:
            raise IndexMismatchError(
                f"{self.index.folder} is an index of {m['model']} embeddings; it cannot be queried with {model} "
                f"(build one: python -m cbmir.index build model={model} dataset=... size=...)"
            )
        self.embedder = QueryEmbedder(m, model_config=model_config, device=device)
        self.embedder.check(self.index.probe, self.index.probe_vector)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.index.manifest

    def allowed(self, where: Mapping[str, Sequence[str]] | None) -> np.ndarray | None:
        """The rows a filter lets through (None: no filter); raises :class:`FilterError` with a sentence."""
        if not where:
            return None
        cached = getattr(self, "_columns", None)
        if cached is None or cached[0] is not self.index.items:  # built again when a new generation is opened
            self._columns = (self.index.items, Columns(self.index.items))
        return self._columns[1].allowed(where, self.index.class_names)

    def admitted(self, where: Mapping[str, Sequence[str]] | None, k: int) -> tuple[np.ndarray | None, int]:
        """The rows ``where`` allows (None: all) and ``k`` clipped to their number; none left is a FilterError."""
        allowed = self.allowed(where)
        n = len(self.index) if allowed is None else len(allowed)
        if n == 0:
            raise FilterError(f"no item passes every filter of {dict(where or {})}")
        return allowed, max(1, min(int(k), n))

    def search(
        self, vectors: np.ndarray, k: int, where: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows (among the rows ``where`` allows, selected inside FAISS's search, so k still come back)."""
        from cbmir.search.exact import l2_normalize

        allowed, k = self.admitted(where, k)
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.manifest["metric"] == "cosine":
            q = l2_normalize(q)
        if allowed is not None and self.index.ids is not None:
            # an inverted file may probe none of the allowed items' lists: an exact masked search instead
            from cbmir.search.exact import search

            distances, found = search(np.asarray(self.index.embeddings[allowed]), q, k, self.manifest["metric"])
            return distances, allowed[found]
        distances, rows = search_rows(self.index.faiss_index, q, k, allowed)
        if self.index.ids is not None:
            from cbmir.index.approx import rows_of

            return distances, rows_of(rows, self.index.ids)
        return distances, rows.astype(np.int64)

    def query(
        self,
        name: str,
        data: bytes | None,
        k: int = 5,
        where: Mapping[str, Sequence[str]] | None = None,
        *,
        limits: DecodeLimits | None = None,
    ) -> Answer:
        """Decode, embed and search one file; raises :class:`BadFile` for a file that is not a readable image."""
        t0 = time.perf_counter()
        pixels = self.embedder.pixels(name, data, limits=limits)
        t1 = time.perf_counter()
        vector = self.embedder.embed(pixels[None])
        t2 = time.perf_counter()
        distances, rows = self.search(vector, k, where)
        t3 = time.perf_counter()
        neighbours = [
            {"rank": r + 1, "row": int(row), "distance": float(dist), **self.item(int(row))}
            for r, (dist, row) in enumerate(zip(distances[0], rows[0]))
            if row >= 0
        ]
        return Answer(
            name,
            pixels,
            neighbours,
            self.vote(rows[0]),
            {"decode": round(t1 - t0, 4), "embed": round(t2 - t1, 4), "search": round(t3 - t2, 4)},
        )

    def item(self, row: int) -> dict[str, str]:
        it = self.index.items[row]
        return {k: it[k] for k in ("split", "position", "source", "label", "label_name", "group", "withheld")}

    def vote(self, rows: np.ndarray) -> dict[str, Any]:
        rows = rows[rows >= 0]
        rank, votes = suggest_label(self.index.labels[rows])
        winner = self.index.items[int(rows[rank])]
        return {
            "row": int(rows[rank]),  # the nearest neighbour holding the suggested label
            "label": winner["label"],
            "label_name": winner["label_name"],
            "votes": votes,
            "k": int(len(rows)),
            "share": votes / len(rows),
        }
