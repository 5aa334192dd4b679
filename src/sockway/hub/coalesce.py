"""Coalesced writes: one write per connection per event loop iteration.

Connections that get something queued register here once; at the end of the current
loop iteration (``call_soon``) every registered connection flushes everything it has
queued in one write. Nothing waits on a timer, so a lone message goes out on the next
iteration (latency unchanged), while a burst of a thousand messages costs one system
call per recipient instead of a thousand. docs/architecture.md ("Encode once, write once
per iteration") explains why: the write system call, not Python, is what limits a
fan-out server.

``flush(cache)`` receives a dictionary that lives for one flush pass; connections that
build the same bytes from the same queued messages (SockJS ``a[...]`` frames, a
compressed batch) share the result through it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

__all__ = ["Coalescer", "Flushable"]

log = logging.getLogger("sockway.hub")


class Flushable(Protocol):
    def flush(self, cache: dict) -> None: ...


class Coalescer:
    __slots__ = ("_dirty", "_loop", "flushes", "writes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Flushable] = []
        self.flushes = 0
        """Flush passes (event-loop iterations in which something was queued)."""
        self.writes = 0
        """Writes of queued messages to clients, counted by the connections where they
        write: one per connection per flush pass that had something for it."""

    def mark(self, conn: Flushable) -> None:
        """Flush ``conn`` at the end of this iteration. Callers mark a connection
        only when its queue goes from empty to non-empty, so it is listed once."""
        if not self._dirty:
            self._loop.call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        dirty = self._dirty
        self._dirty = []
        self.flushes += 1
        cache: dict = {}
        for conn in dirty:
            try:
                conn.flush(cache)
            except Exception:  # one broken connection must not stop the others
                log.exception("flush failed for %r", conn)

    def flush_now(self) -> None:
        """Flush at once (used before shutdown)."""
        if self._dirty:
            self._flush()
