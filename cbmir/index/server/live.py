"""The index being served, replaced whole when its ``CURRENT`` pointer names another generation.

A thread looks at the pointer at most every ``interval`` seconds and at once on SIGHUP (and re-reads the token
file then). When the pointer changed, the new generation is opened completely (files checked, model rebuilt, probe
re-embedded) before one attribute assignment swaps it in: a request holds the :class:`Served` it started with, so
a query in flight finishes on the old generation. When opening fails (a half-written or broken generation), the old
one keeps being served and one log line says why; it is tried again when the pointer changes again or on SIGHUP.
An index without a pointer (built before generations) is never reloaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cbmir.errors import CbmirError

log = logging.getLogger(__name__)


def pointer(root: Path) -> str | None:
    """The generation ``root``'s pointer names (None: no pointer, or an index without generations)."""
    try:
        from cbmir.index.generations import current_name
    except ImportError:  # a cbmir without generations: nothing to follow
        return None
    return current_name(root)


@dataclass(frozen=True)
class Served:
    """One opened generation and what the routes derive from it."""

    retriever: Any  # cbmir.index.retrieve.Retriever
    generation: str | None
    text: Any = None  # cbmir.index.text_query.TextRetriever over the same opened index, or None
    text_missing: str | None = "this server was started without text queries"  # why ``text`` is None

    @property
    def index(self) -> Any:
        return self.retriever.index

    @property
    def manifest(self) -> dict[str, Any]:
        return self.retriever.manifest


class Live:
    """The :class:`Served` generation of an index folder, following its pointer."""

    def __init__(self, served: Served, *, root: Path | None = None, opener: Callable[[Path], Any] | None = None,
                 interval: float = 10.0, on_hup: Callable[[], None] | None = None):  # fmt: skip
        self.current = served
        self.root, self.opener, self.interval = root, opener, interval
        self.on_hup = on_hup
        self._failed: str | None = None
        self._wake = threading.Event()
        self._hup = False
        self._stop = False
        self._thread: threading.Thread | None = None

    @classmethod
    def fixed(cls, retriever: Any, text: Any = None) -> Live:
        """A retriever (and a text retriever) served as they are (tests, an index opened elsewhere): never reloads."""
        return cls(Served(retriever, None, text, None if text is not None else "not opened for text queries"))

    def check(self, *, force: bool = False) -> bool:
        """Swap in the generation the pointer names when it is another one; True when a swap happened."""
        if self.root is None or self.opener is None:
            return False
        try:
            name = pointer(self.root)
        except CbmirError as exc:
            log.error("index pointer not followed, still serving %s: %s", self.current.generation, exc)
            return False
        if name is None or name == self.current.generation or (name == self._failed and not force):
            return False
        try:
            opened = self.opener(self.root)  # a Served, or a bare retriever
        except Exception as exc:  # noqa: BLE001 (any failure to open keeps the old generation in service)
            self._failed = name
            log.error("generation %s not served, still serving %s: %s", name, self.current.generation,
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)  # fmt: skip
            return False
        served = opened if isinstance(opened, Served) else Served(opened, None)
        generation = getattr(served.index, "generation", None) or name
        self.current, self._failed = replace(served, generation=generation), None
        log.info("now serving generation %s (%d items)", generation, len(served.index))
        return True

    def hup(self) -> None:
        """SIGHUP: look at the pointer (and the token file) now."""
        self._hup = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop:
                return
            hup, self._hup = self._hup, False
            if hup and self.on_hup is not None:
                self.on_hup()
            self.check(force=hup)

    def start(self) -> None:
        if (self.root is None and self.on_hup is None) or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="cbmir-generations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
