"""Rate-limited log lines, for whatever a client can make the gateway say at will.

A hostile client must never make the gateway write more than it sent, so a complaint
about bad input (a malformed request line, a refused connection, a bad handshake) goes
through a :class:`RateLimitedLog`: each *kind* of complaint (its ``key``, a fixed string
chosen by the caller, never client data) gets at most ``limit`` lines per ``period``
seconds, and the first line of the next period says how many were left out. Never with a
traceback: these are the clients' mistakes, not the gateway's.

    from sockway.ratelog import RateLimitedLog

    complaints = RateLimitedLog("sockway.edge")
    complaints.warning("bad-request", "bad request from %s: %s", peer, reason)

It depends on nothing else in sockway, so that every layer may use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]

MAX_KEYS = 256
"""Kinds of complaint remembered per log; more (a caller passing client data as the
key, which it must not) start over rather than grow."""


class _Window:
    __slots__ = ("count", "left_out", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.left_out = 0


class RateLimitedLog:
    """At most ``limit`` lines per ``period`` seconds for each key, on ``logger``."""

    __slots__ = ("_clock", "_windows", "limit", "logger", "period")

    def __init__(self, logger: logging.Logger | str, limit: int = 5, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.limit = limit
        self.period = period
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` had its ``limit`` of lines in
        this period; True if the line was written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= MAX_KEYS:
                self._windows.clear()
            window = self._windows[key] = _Window(now)
        elif now - window.start >= self.period:
            window.start = now
            window.count = 0
        if window.count >= self.limit:
            window.left_out += 1
            return False
        window.count += 1
        if window.left_out:
            msg += " (and %d more like it left out of the log)"
            args = (*args, window.left_out)
            window.left_out = 0
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)
