"""The audit log: one JSON line per request (time, user, client, method, route, status, rows returned, duration).

It records who asked for what, never what was sent: no image bytes, no file names, no tokens (a token identifies
its user by name only), no query strings. Written through :mod:`logging` so that lines from threads never mix.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._log = logging.getLogger(f"cbmir.audit.{self.path}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._log.handlers[:] = [handler]

    def write(
        self, *, user: str | None, client: str, method: str, route: str, status: int, rows: Any, ms: float
    ) -> None:
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "user": user,
            "client": client,
            "method": method,
            "route": route,
            "status": status,
            "rows": rows,
            "ms": round(ms, 1),
        }
        self._log.info(json.dumps(record))

    def close(self) -> None:
        for handler in self._log.handlers:
            handler.close()
        self._log.handlers[:] = []
