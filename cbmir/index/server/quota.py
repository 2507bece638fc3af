"""Limits per user: requests per minute (the ``limits`` library's moving window) and concurrent queries.

A user is the token's name (``anonymous`` without a token file). Every request counts against ``request_rate``;
queries also against ``query_rate`` and at most ``user_queries`` of one user run or wait at once. Beyond any of
them: 429 with ``Retry-After``, one sentence.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.exceptions import HTTPException

from cbmir.errors import ConfigError


def rate(text: str, key: str) -> RateLimitItem:
    """A rate such as ``60/minute`` (the ``limits`` notation), or a ConfigError naming the option."""
    try:
        return parse(text)
    except ValueError:
        raise ConfigError(f"{key} {text!r} is not a rate; write it as N/second, N/minute or N/hour") from None


class Quota:
    def __init__(self, *, request_rate: str, query_rate: str, user_queries: int):
        if user_queries < 1:
            raise ConfigError(f"--user-queries must be at least 1 (got {user_queries})")
        self.requests = rate(request_rate, "--request-rate")
        self.queries = rate(query_rate, "--query-rate")
        self.user_queries = user_queries
        self._window = MovingWindowRateLimiter(MemoryStorage())
        self._running: dict[str, anyio.CapacityLimiter] = {}

    def _hit(self, item: RateLimitItem, user: str, what: str) -> None:
        if not self._window.hit(item, what, user):
            reset = self._window.get_window_stats(item, what, user).reset_time
            wait = max(1, math.ceil(reset - time.time()))
            raise HTTPException(
                429, f"{user} sent more than {item} {what}; try again in {wait} s", headers={"Retry-After": str(wait)}
            )

    def request(self, user: str) -> None:
        """Count one request of ``user``; 429 beyond the request rate."""
        self._hit(self.requests, user, "requests")

    @asynccontextmanager
    async def query(self, user: str) -> AsyncIterator[None]:
        """Count one query of ``user`` and hold one of its concurrent places; 429 beyond either."""
        self._hit(self.queries, user, "queries")
        limiter = self._running.setdefault(user, anyio.CapacityLimiter(self.user_queries))
        try:
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            raise HTTPException(
                429,
                f"{user} already has {self.user_queries} queries running; wait for one to finish",
                headers={"Retry-After": "1"},
            ) from None
        try:
            yield
        finally:
            limiter.release()
