"""Decoding and embedding in a bounded pool: a few at a time, a short queue, and 503 with Retry-After beyond it.

``workers`` queries run at once (default: the machine's cores; each already uses torch's threads), ``queue`` more
wait for a worker; the next one is refused at once, before its body is read, so a burst of uploads can neither
pile up memory in the process nor starve the queries already admitted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.exceptions import HTTPException

T = TypeVar("T")
#: Seconds a refused client is told to wait: a query on 2 cores takes well under that.
RETRY_AFTER_S = 2


class WorkPool:
    """``workers`` threads for the heavy part of a query, ``queue`` waiting places, refusal beyond."""

    def __init__(self, workers: int, queue: int):
        self.workers, self.queue = workers, queue
        self._running = anyio.CapacityLimiter(workers)
        self._admitted = anyio.CapacityLimiter(workers + queue)

    @asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """A place among the running or waiting queries, or 503 now."""
        try:
            self._admitted.acquire_nowait()
        except anyio.WouldBlock:
            raise HTTPException(
                503,
                f"the server is busy ({self.workers} queries running, {self.queue} waiting); try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        try:
            yield
        finally:
            self._admitted.release()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, waiting for a free worker."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._running)

    @property
    def busy(self) -> int:
        return int(self._admitted.borrowed_tokens)
