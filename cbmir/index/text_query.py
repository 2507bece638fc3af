"""Query an index by words: a text (and optionally an image) against the index's joint image-text vectors.

An index of a vision-language model (a ``text`` block in its model YAML) holds, beside the study's embeddings,
its items' **joint-space** image vectors (``joint.npy``, unit norm, exact inner-product FAISS index
``joint.faiss``; CONCH: ``encode_image(proj_contrast=True)``), written by :func:`add_joint_vectors` at build
time from the ``protocol=text`` cell's cache. A query text is tokenised and embedded by the model's text tower
(unit norm) and ranked by cosine. With an image too, the query is the renormalised mix
``w · text + (1 - w) · image`` of the two unit vectors (``--text-weight w``), the image embedded by the joint
image tower. An index of a model without a text tower refuses text in one line.

For the page (``cbmir serve``): ``TextRetriever(folder).ask(text, k=5, image=None, text_weight=0.5)`` →
:class:`cbmir.index.retrieve.Answer` (``image`` = ``(file name, bytes)``; ``Answer.as_dict()`` is the JSON).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from cbmir.errors import ConfigError
from cbmir.index.files import load_array
from cbmir.index.retrieve import Answer, QueryEmbedder, Retriever
from cbmir.models.text import NoTextTowerError, has_text, joint_model_cfg, require_text

JOINT_EMBEDDINGS = "joint.npy"
JOINT_FAISS = "joint.faiss"


def add_joint_vectors(cfg: DictConfig, partial: Path, roles: tuple[str, ...]) -> dict[str, Any]:
    """Build hook: the joint-space vectors of the index's items (from the ``protocol=text`` cell) and their record.

    Returns the manifest's ``text`` block, or ``{"missing": reason}`` for a model without a text tower.
    """
    import faiss

    from cbmir.cell.run import run_cell
    from cbmir.search.exact import flat_index, l2_normalize

    if not has_text(cfg.model):
        try:
            require_text(cfg.model, "a text query")
        except (NoTextTowerError, ConfigError) as exc:
            return {"missing": str(exc)}
    if not cfg.index.get("text", True):
        return {"missing": "the index was built with index.text=false"}
    tcfg = cfg.copy()
    with open_dict(tcfg):
        tcfg.protocol.name, tcfg.protocol.kind, tcfg.protocol.metric = "text", "text", "cosine"
    result = run_cell(tcfg)
    vectors = np.concatenate([np.load(result["embeddings"][r], allow_pickle=False) for r in roles]).astype(np.float32)
    vectors = l2_normalize(vectors).astype(np.float32)
    np.save(partial / JOINT_EMBEDDINGS, vectors)
    faiss.write_index(flat_index(vectors, "cosine"), str(partial / JOINT_FAISS))
    fields = Path(result["embeddings"]["database"]).with_suffix(".json").read_text()
    import json

    return {
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "image_backbone": json.loads(fields)["backbone"],
        "text_tower": result["text_tower"],
        "metric": "cosine",
        "cell": f"{result['protocol']}/{result['dataset']}/{result['size']}/{result['model']}",
    }


class TextRetriever(Retriever):
    """An opened index answering text (and text + image) queries from its joint-space vectors."""

    def __init__(self, folder: str | Path, *, check: bool = True, device: str | None = None):
        import faiss
        import torch

        from cbmir.index.files import open_index
        from cbmir.models.text import load_text_tower

        self.index = open_index(folder, check=check)
        block = self.index.manifest.get("text") or {}
        if "model_config" not in block:
            why = block.get("missing") or "it was built before text queries existed"
            raise NoTextTowerError(f"index {self.index.folder} cannot answer text queries: {why}")
        self.block = block
        self.device = device
        self.cfg_model = OmegaConf.create(block["model_config"])
        torch.manual_seed(int(self.index.manifest["seed"]))  # random-weight towers come out as the build's
        self.tower = load_text_tower(self.cfg_model)
        self.tower.net.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vectors = load_array(self.index.folder / JOINT_EMBEDDINGS)
        self.joint_faiss = faiss.read_index(str(self.index.folder / JOINT_FAISS))
        self._image: QueryEmbedder | None = None

    def image_embedder(self) -> QueryEmbedder:
        """The joint-space image tower, built on first use and checked on the index's probe item."""
        if self._image is None:
            joint = OmegaConf.to_container(joint_model_cfg(self.cfg_model), resolve=True)
            manifest = {**self.index.manifest, "backbone": self.block["image_backbone"], "model_config": joint}
            embedder = QueryEmbedder(manifest, device=self.device)
            embedder.check(self.index.probe, self.vectors[self.index.manifest["probe_row"]])
            self._image = embedder
        return self._image

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from cbmir.search.exact import l2_normalize

        k = max(1, min(int(k), len(self.index)))
        distances, rows = self.joint_faiss.search(l2_normalize(np.asarray(vectors, dtype=np.float32)), k)
        return distances, rows.astype(np.int64)

    def ask(self, text: str, k: int = 5, *, image: tuple[str, bytes] | None = None, text_weight: float = 0.5) -> Answer:
        """One query: ``text`` alone, or mixed with ``image`` (file name, bytes) at ``text_weight`` in [0, 1]."""
        if not text or not text.strip():
            raise ConfigError("the query text is empty")
        if not 0.0 <= float(text_weight) <= 1.0:
            raise ConfigError(f"--text-weight must lie in [0, 1], got {text_weight}")
        t0 = time.perf_counter()
        vector = self.tower.encode([text])[0].astype(np.float64)
        t1 = time.perf_counter()
        pixels = np.zeros_like(self.index.probe)
        seconds = {"text": round(t1 - t0, 4)}
        if image is not None:
            embedder = self.image_embedder()
            pixels = embedder.pixels(*image)
            picture = embedder.embed(pixels[None])[0].astype(np.float64)
            picture /= max(np.linalg.norm(picture), 1e-12)
            vector = float(text_weight) * vector + (1.0 - float(text_weight)) * picture
            seconds["image"] = round(time.perf_counter() - t1, 4)
        t2 = time.perf_counter()
        distances, rows = self.search(vector[None], k)
        seconds["search"] = round(time.perf_counter() - t2, 4)
        neighbours = [
            {"rank": r + 1, "row": int(row), "distance": float(d), **self.item(int(row))}
            for r, (d, row) in enumerate(zip(distances[0], rows[0]))
            if row >= 0
        ]
        name = text if image is None else f"{text} + {Path(image[0]).name} (text weight {text_weight:g})"
        return Answer(name, pixels, neighbours, self.vote(rows[0]), seconds)


def ask_all(retriever: TextRetriever, text: str, files: list[Path], k: int, text_weight: float) -> tuple[list, int]:
    """``cbmir query --text``: the text alone, or mixed with each image in turn; ``(answers, failed files)``."""
    from cbmir.data.decode import BadFile

    if not files:
        return [retriever.ask(text, k, text_weight=text_weight)], 0
    answers, failed = [], 0
    for path in files:
        try:
            answers.append(retriever.ask(text, k, image=(str(path), path.read_bytes()), text_weight=text_weight))
        except (BadFile, OSError) as exc:
            failed += 1
            print(f"cbmir: error: {path}: {exc}", file=sys.stderr)
    return answers, failed
