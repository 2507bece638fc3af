"""The text protocols of a cell: ``protocol=text`` (text → image) and ``protocol=zeroshot`` (image → text).

:func:`cbmir.cell.run.compute_cell` hooks in here twice: the image tower is built in the joint image-text
space (:func:`cbmir.models.text.joint_model_cfg`, its own cache key), and :class:`TextEvaluation` replaces
the image-retrieval evaluation (the same thin Lightning callback drives either). It embeds every class's
prompts (templates × class names), averages them into one unit query per class, and scores either the class
queries against the database images or every query image against the classes. result.json and
per_query.npz follow the image protocols' contract.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cbmir.cell.evaluate import CellResult, Evaluation
from cbmir.cell.spec import TEXT_KINDS, CellSpec
from cbmir.errors import ConfigError
from cbmir.logs import get_logger
from cbmir.metrics.per_query import write_per_query
from cbmir.metrics.retrieval import class_membership, per_class, summarize
from cbmir.metrics.text import class_query_labels, database_bootstrap, text_to_image_scores, zeroshot_scores
from cbmir.models.text import ensemble, prompt_texts, require_text
from cbmir.stats.paired import metric_intervals

log = get_logger(__name__)


def text_kind(cell: CellSpec) -> str | None:
    """``text`` or ``zeroshot`` for a text protocol, else ``None`` (image retrieval)."""
    return cell.protocol.kind if cell.protocol.kind in TEXT_KINDS else None


@dataclass(frozen=True)
class Prompts:
    """The prompts of a cell: templates (with ``CLASSNAME``) and each class's names (one or more synonyms)."""

    templates: tuple[str, ...]
    classnames: tuple[tuple[str, ...], ...]

    def as_dict(self) -> dict[str, Any]:
        return {"templates": list(self.templates), "classnames": [list(n) for n in self.classnames]}


def resolve_prompts(
    model: Any, node: dict[str, Any], kind: str, class_names: dict[str, str] | None, n_classes: int
) -> Prompts:
    """``prompts.templates`` (else the model's ``text.templates``) and ``prompts.classnames`` (else the dataset's).

    ``prompts.classnames`` is a list (one entry per class, in label order) or a mapping from label id; an entry is
    a name or a list of synonyms whose prompts are averaged together, as CONCH's zero-shot code does.
    """
    block = require_text(model, f"protocol={kind}")
    templates = node.get("templates") or block.get("templates") or ["a photo of CLASSNAME."]
    names = node.get("classnames")
    if names is None:
        if not class_names:
            raise ConfigError("the dataset has no class names: set prompts.classnames (one per class, in label order)")
        names = [class_names[str(i)] for i in range(n_classes)]
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i)) for i in range(n_classes)]
    if len(names) != n_classes or any(n is None or n == [] for n in names):
        raise ConfigError(f"prompts.classnames needs one entry per class ({n_classes}), got {names!r}")
    classnames = tuple(tuple([n] if isinstance(n, str) else [str(s) for s in n]) for n in names)
    prompt_texts(templates, classnames)  # validates the templates
    return Prompts(tuple(str(t) for t in templates), classnames)


def n_classes_of(labels: np.ndarray, class_names: dict[str, str] | None) -> int:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.shape[1]
    return len(class_names) if class_names else int(labels.max()) + 1


class TextEvaluation(Evaluation):
    """The evaluation of the text protocols: the class prompts embedded, then scored against the images."""

    def __init__(self, cell: CellResult, loggers: list | None, spec: CellSpec):
        super().__init__(cell, loggers)
        self.spec = spec
        self.kind = text_kind(spec)

    def class_embeddings(self, prompts: Prompts) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(C, D)`` ensembles, ``(C, P, D)`` per-prompt embeddings, and the text tower's identity."""
        import torch

        from cbmir.models.text import load_text_tower

        torch.manual_seed(self.spec.seed)  # random-weight towers (model.pretrained=false) are reproducible
        tower = load_text_tower(self.spec.model)
        texts = prompt_texts(prompts.templates, prompts.classnames)
        flat = tower.encode([t for group in texts for t in group])
        per_prompt = flat.reshape(len(texts), -1, flat.shape[-1]) if len(set(map(len, texts))) == 1 else None
        starts = np.cumsum([0, *map(len, texts)])
        classes = np.stack([ensemble(flat[a:b]) for a, b in zip(starts[:-1], starts[1:])])
        return classes, per_prompt, tower.identity

    def evaluate(self) -> dict[str, Any]:
        c = self.cell
        database, queries = self.embeddings()
        n_classes = n_classes_of(c.labels["database"], c.class_names)
        prompts = resolve_prompts(self.spec.model, self.spec.prompts, str(self.kind), c.class_names, n_classes)
        t0 = time.perf_counter()
        classes, per_prompt, text_identity = self.class_embeddings(prompts)
        if classes.shape[1] != database.shape[1]:
            raise ConfigError(f"text embeddings are {classes.shape[1]}-d, the images' {database.shape[1]}-d")
        text_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.kind == "text":
            metrics, statistics, labels, extra = self.score_text(classes, per_prompt, database, prompts)
        else:
            metrics, statistics, labels, extra = self.score_zeroshot(classes, queries, prompts)
        search_seconds = time.perf_counter() - t0
        c.out_dir.mkdir(parents=True, exist_ok=True)
        write_per_query(c.out_dir, self.scores, labels, extra=extra)
        fields = {
            "metric": "cosine",
            "text_protocol": self.kind,
            "image_embedding": "joint image-text space (model.text.image applied)",
            "text_tower": text_identity,
            "prompts": prompts.as_dict(),
            "n_queries": int(len(labels)),
            "n_database": int(len(database)) if self.kind == "text" else n_classes,
            "embedding_dim": int(database.shape[1]),
            "metrics": metrics,
            **statistics,
        }
        return self.publish(fields, {"text": text_seconds, "search": search_seconds})

    def score_text(self, classes, per_prompt, database, prompts: Prompts):
        c = self.cell
        db_labels = c.labels["database"]
        scores, order = text_to_image_scores(classes, database, db_labels, c.k)
        self.scores = scores
        q_labels = class_query_labels(len(classes), db_labels)
        names = [" / ".join(n) for n in prompts.classnames]
        membership = np.eye(len(classes), dtype=bool)
        resamples = self.spec.protocol.resamples
        statistics = {
            "intervals": database_bootstrap(order, q_labels, db_labels, min(c.k, len(database)), c.stats, resamples),
            "per_class": per_class(scores, membership, names),
        }
        extra = {}
        if per_prompt is not None:  # every template's own query, scored the same way: (C, P) arrays
            flat = per_prompt.reshape(-1, per_prompt.shape[-1])
            labels = np.repeat(q_labels, per_prompt.shape[1], axis=0)
            from cbmir.metrics.at_r import metrics_at_r

            for name, values in metrics_at_r(database, flat, db_labels, labels, "cosine").items():
                extra[f"prompt:{name}"] = 100.0 * values.reshape(per_prompt.shape[:2])
        return summarize(scores), statistics, q_labels, extra

    def score_zeroshot(self, classes, queries, prompts: Prompts):
        c = self.cell
        q_labels = c.labels["query"]
        ks = self.spec.protocol.top_k
        scores, order = zeroshot_scores(queries, classes, q_labels, ks)
        self.scores = scores
        membership, names = class_membership(q_labels)
        statistics = {
            "intervals": metric_intervals(scores, c.stats, membership),
            "per_class": per_class(scores, membership, names),
        }
        return summarize(scores, membership), statistics, q_labels, {"pred:class": order[:, 0].astype(np.int64)}
