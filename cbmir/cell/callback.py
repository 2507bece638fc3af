"""The Lightning side of a cell's evaluation: a thin callback around an :class:`cbmir.cell.evaluate.Evaluation`
(or the text protocols' :class:`cbmir.cell.text.TextEvaluation`)."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.callbacks import Callback

from cbmir.cell.evaluate import Evaluation


class RetrievalEvaluator(Callback):
    """Times the extraction and, once the writer has merged the embeddings, evaluates the cell on rank 0.

    :meth:`evaluate` runs the same evaluation directly when every embedding came from the cache.
    """

    def __init__(self, evaluation: Evaluation):
        super().__init__()
        self.evaluation = evaluation
        self._t0: float | None = None

    @property
    def result(self) -> dict[str, Any] | None:
        return self.evaluation.result

    def on_predict_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._t0 is not None:
            self.evaluation.extraction_seconds = time.perf_counter() - self._t0
        if trainer.is_global_zero:
            self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        return self.evaluation.evaluate()
