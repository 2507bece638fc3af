"""Query an index by words: a text (and optionally an image) against the index's joint image-text vectors.

An index of a vision-language model (a ``text`` block in its model YAML) holds, beside the study's embeddings,
its items' **joint-space** image vectors (``joint.npy``, unit norm; CONCH: ``encode_image(proj_contrast=True)``),
taken at build time from the ``protocol=text`` cell's cache (:func:`joint_vectors`) and carried by every
generation: ``index add`` embeds the new items with the joint image tower too, ``index remove`` drops their rows.
A query text is tokenised and embedded by the model's text tower (unit norm) and ranked by cosine. With an image
too, the query is the renormalised mix ``w · text + (1 - w) · image`` of the two unit vectors
(``--text-weight w``), the image embedded by the joint image tower. An index of a model without a text tower
refuses text in one line.

For the page (``cbmir serve``): ``TextRetriever(folder).ask(text, k=5, image=None, text_weight=0.5, where=None)``
→ :class:`cbmir.index.retrieve.Answer` (``image`` = ``(file name, bytes)``; ``Answer.as_dict()`` is the JSON).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from cbmir.data.pixels import DecodeLimits
from cbmir.errors import ConfigError
from cbmir.index.files import JOINT, IndexFolder, open_index
from cbmir.index.retrieve import Answer, QueryEmbedder, Retriever, search_rows
from cbmir.models.text import NoTextTowerError, has_text, joint_model_cfg, require_text

#: The longest query text accepted (the towers read 77 or 128 tokens; a paragraph is a mistake, not a query).
MAX_TEXT = 1000
#: kept for callers that name the file (the test of the build, the docs)
JOINT_EMBEDDINGS = JOINT


def joint_vectors(cfg: DictConfig, roles: Sequence[str]) -> tuple[dict[str, Any], np.ndarray | None]:
    """Build step: the manifest's ``text`` block and the items' unit joint-space vectors (``None`` without a tower).

    The vectors come from the ``protocol=text`` cell of the same model, data and size (run or reused from the
    cache), so an index's text answers use exactly the evaluated embeddings.
    """
    from cbmir.cell.run import run_cell
    from cbmir.search.exact import l2_normalize

    if not has_text(cfg.model):
        try:
            require_text(cfg.model, "a text query")
        except (NoTextTowerError, ConfigError) as exc:
            return {"missing": str(exc)}, None
    if not cfg.index.get("text", True):
        return {"missing": "the index was built with index.text=false"}, None
    tcfg = cfg.copy()
    with open_dict(tcfg):
        tcfg.protocol.name, tcfg.protocol.kind, tcfg.protocol.metric = "text", "text", "cosine"
    result = run_cell(tcfg)
    vectors = np.concatenate([np.load(result["embeddings"][r], allow_pickle=False) for r in roles])
    fields = json.loads(Path(result["embeddings"]["database"]).with_suffix(".json").read_text())
    block = {
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "image_backbone": fields["backbone"],
        "text_tower": result["text_tower"],
        "metric": "cosine",
        "cell": f"{result['protocol']}/{result['dataset']}/{result['size']}/{result['model']}",
    }
    return block, l2_normalize(vectors.astype(np.float32)).astype(np.float32)


def joint_embedder(manifest: dict[str, Any], *, device: str | None = None) -> QueryEmbedder:
    """The index's image tower in the joint image-text space (``model.text.image`` applied)."""
    block = manifest["text"]
    joint = OmegaConf.to_container(joint_model_cfg(OmegaConf.create(block["model_config"])), resolve=True)
    return QueryEmbedder({**manifest, "backbone": block["image_backbone"], "model_config": joint}, device=device)


def record_probe(
    block: dict[str, Any], embedder: QueryEmbedder, probe: np.ndarray, first: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """The text block with the joint tower's embedding of the synthetic probe (checked on reopening), after
    checking that the query path gives the evaluated joint vector of the first item (``first`` = pixels, vector)."""
    from cbmir.index.files import IndexMismatchError

    got = embed_joint(embedder, np.asarray(first[0])[None])[0]
    error = float(np.linalg.norm(got - np.asarray(first[1], dtype=np.float32)))
    if not error <= embedder.tolerance:
        raise IndexMismatchError(
            f"the joint image tower does not reproduce the text cell's vectors (error {error:.3g} on the first item)"
        )
    return {**block, "probe_embedding": embedder.embed(np.asarray(probe)[None])[0].tolist()}


def embed_joint(embedder: QueryEmbedder, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Items → unit joint-space vectors (``index add``)."""
    from cbmir.search.exact import l2_normalize

    out = [embedder.embed(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return l2_normalize(np.concatenate(out).astype(np.float32)).astype(np.float32)


def text_missing(index: IndexFolder) -> str | None:
    """Why an index cannot answer text queries (``None``: it can)."""
    block = index.manifest.get("text") or {}
    if "model_config" in block and index.joint is not None:
        return None
    return block.get("missing") or "it was built before text queries existed"


class TextRetriever(Retriever):
    """An opened index answering text (and text + image) queries from its joint-space vectors."""

    def __init__(self, folder: str | Path | IndexFolder, *, check: bool = True, device: str | None = None):
        """``folder``: an index folder, or an index already opened (the server shares its image retriever's)."""
        import torch

        from cbmir.models.text import load_text_tower

        self.index = folder if isinstance(folder, IndexFolder) else open_index(folder, check=check)
        why = text_missing(self.index)
        if why is not None:
            raise NoTextTowerError(f"index {self.index.root or self.index.folder} cannot answer text queries: {why}")
        block = self.index.manifest["text"]
        self.block = block
        self.device = device
        self.cfg_model = OmegaConf.create(block["model_config"])
        torch.manual_seed(int(self.index.manifest["seed"]))  # random-weight towers come out as the build's
        self.tower = load_text_tower(self.cfg_model)
        self.tower.net.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        from cbmir.search.exact import flat_index

        self.vectors = np.asarray(self.index.joint, dtype=np.float32)
        self.joint_index = flat_index(self.vectors, "cosine")  # built once: a query only searches it
        self._image: QueryEmbedder | None = None

    def image_embedder(self) -> QueryEmbedder:
        """The joint-space image tower, built on first use and checked on the index's probe."""
        if self._image is None:
            embedder = joint_embedder(self.index.manifest, device=self.device)
            embedder.check(self.index.probe, np.asarray(self.block["probe_embedding"], dtype=np.float32))
            self._image = embedder
        return self._image

    def search(
        self, vectors: np.ndarray, k: int, where: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine over the joint vectors: an exact search, restricted inside FAISS to the rows ``where`` allows."""
        from cbmir.search.exact import l2_normalize

        allowed, k = self.admitted(where, k)
        q = l2_normalize(np.ascontiguousarray(vectors, dtype=np.float32))
        distances, rows = search_rows(self.joint_index, q, k, allowed)
        return distances, rows.astype(np.int64)

    def ask(
        self,
        text: str,
        k: int = 5,
        *,
        image: tuple[str, bytes] | None = None,
        text_weight: float = 0.5,
        where: Mapping[str, Sequence[str]] | None = None,
        limits: DecodeLimits | None = None,
    ) -> Answer:
        """One query: ``text`` alone, or mixed with ``image`` (file name, bytes) at ``text_weight`` in [0, 1].

        ``limits`` caps what the image's header may claim (the server passes its own).
        """
        if not text or not text.strip():
            raise ConfigError("the query text is empty")
        if len(text) > MAX_TEXT:
            raise ConfigError(f"the query text is {len(text)} characters long; at most {MAX_TEXT} are read")
        if not 0.0 <= float(text_weight) <= 1.0:
            raise ConfigError(f"--text-weight must lie in [0, 1], got {text_weight}")
        t0 = time.perf_counter()
        vector = self.tower.encode([text])[0].astype(np.float64)
        t1 = time.perf_counter()
        pixels = np.zeros_like(self.index.probe)
        seconds = {"text": round(t1 - t0, 4)}
        if image is not None:
            embedder = self.image_embedder()
            pixels = embedder.pixels(*image, limits=limits)
            picture = embedder.embed(pixels[None])[0].astype(np.float64)
            picture /= max(np.linalg.norm(picture), 1e-12)
            vector = float(text_weight) * vector + (1.0 - float(text_weight)) * picture
            seconds["image"] = round(time.perf_counter() - t1, 4)
        t2 = time.perf_counter()
        distances, rows = self.search(vector[None], k, where)
        seconds["search"] = round(time.perf_counter() - t2, 4)
        neighbours = [
            {"rank": r + 1, "row": int(row), "distance": float(d), **self.item(int(row))}
            for r, (d, row) in enumerate(zip(distances[0], rows[0]))
            if row >= 0
        ]
        name = text if image is None else f"{text} + {Path(image[0]).name} (text weight {text_weight:g})"
        return Answer(name, pixels, neighbours, self.vote(rows[0]), seconds)


def ask_all(
    retriever: TextRetriever,
    text: str,
    files: list[Path],
    k: int,
    text_weight: float,
    where: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list, int]:
    """``cbmir query --text``: the text alone, or mixed with each image in turn; ``(answers, failed files)``."""
    from cbmir.data.decode import BadFile

    if not files:
        return [retriever.ask(text, k, text_weight=text_weight, where=where)], 0
    answers, failed = [], 0
    for path in files:
        try:
            image = (str(path), path.read_bytes())
            answers.append(retriever.ask(text, k, image=image, text_weight=text_weight, where=where))
        except (BadFile, OSError) as exc:
            failed += 1
            print(f"cbmir: error: {path}: {exc}", file=sys.stderr)
    return answers, failed
