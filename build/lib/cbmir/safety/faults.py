"""Deterministic fault injection for tests: ``CBMIR_FAULT`` names where a run dies and how.

``CBMIR_FAULT="after_batch:3"`` SIGKILLs the process the third time extraction finishes a batch;
several entries are comma-separated, each ``<point>:<n>[:<action>]``. Actions: ``kill`` (SIGKILL,
the default), ``int`` (SIGINT, a Ctrl-C), ``enospc`` (an ``OSError`` "no space left on device")
and ``oom`` (a CUDA out-of-memory error). The points:

==================  ==========================================================================
``after_batch``     a batch of embeddings was written to its shard
``merge``           the merged embeddings were written to the temporary file, before it is renamed
``before_result``   neighbours and per-query scores are written, ``result.json`` is not
``after_cell``      a cell finished (its ``result.json`` is on disk)
``write``           a file is about to be written (atomic writes and shards)
==================  ==========================================================================

``forward_over:<n>`` raises a CUDA out-of-memory error from every forward pass of more than ``n``
images, as a GPU too small for the batch would. Unset, each point costs one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "CBMIR_FAULT"
ACTIONS = ("kill", "int", "enospc", "oom")

_hits: Counter[str] = Counter()


def _plan(spec: str) -> dict[str, tuple[int, str]]:
    plan = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        point, _, rest = entry.partition(":")
        count, _, action = rest.partition(":")
        action = action or ("oom" if point == "forward_over" else "kill")
        if not count.isdigit() or action not in ACTIONS:
            raise ValueError(f"{ENV}: bad entry {entry!r}; expected <point>:<n>[:{'|'.join(ACTIONS)}]")
        plan[point] = (int(count), action)
    return plan


def _act(action: str, where: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "int":
        os.kill(os.getpid(), signal.SIGINT)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
    else:
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by {ENV} at {where})")


def hit(point: str, where: str = "") -> None:
    """Count one pass through ``point``; act when ``CBMIR_FAULT`` asks for it on this pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    planned = _plan(spec).get(point)
    if planned is None:
        return
    _hits[point] += 1
    if _hits[point] == planned[0]:
        _act(planned[1], where or point)


def forward(n_images: int) -> None:
    """The forward pass of ``n_images``: an injected out-of-memory error above ``forward_over``'s bound."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    planned = _plan(spec).get("forward_over")
    if planned is not None and n_images > planned[0]:
        _act(planned[1], f"a forward pass of {n_images} images")


def reset() -> None:
    """Forget the passes counted so far (tests running several cells in one process)."""
    _hits.clear()
