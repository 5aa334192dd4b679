"""An endpoint: a prefix, its settings, its mode and its connected clients."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sockway import closecodes
from sockway.hub.group import Group

if TYPE_CHECKING:
    from sockway.config import EndpointConfig
    from sockway.hub.connection import Connection
    from sockway.hub.hub import Hub
    from sockway.hub.modes import Mode

__all__ = ["Endpoint"]

log = logging.getLogger("sockway.endpoint")


class Endpoint:
    """Connections report their life here; the mode decides what messages mean.

    Mode callbacks run synchronously on the event loop. An exception in one closes that
    client with 1011 and is logged; it never reaches the transport or other clients.

    The mode sees a connection's life whole or not at all: one refused before its
    ``on_open`` (a bad token, authentication required) gets no ``on_close`` either, so
    the application never receives a ``close`` event for a connection it was never told
    about. Once a connection is closing (closed by the gateway or the application, or by
    the client's close frame), what it still sends reaches neither the mode nor the
    application: after ``close``, nothing.
    """

    def __init__(self, config: EndpointConfig, mode: Mode, hub: Hub) -> None:
        self.config = config
        self.prefix = config.prefix
        self.mode = mode
        self.hub = hub
        self.clients = Group()
        self.messages_in = 0
        self.opened_total = 0
        self.closed_total = 0
        self.bytes_in = 0
        self.bytes_out = 0
        rate = config.rate_limit
        self._rate = rate
        self._burst = float(config.rate_burst or max(1, int(rate * 2)))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._refused: set[str] = set()
        """Connections closed before the mode saw them open."""
        mode.bind(self)

    @property
    def accepting(self) -> bool:
        """Whether a new connection may open (endpoint and server limits)."""
        limit = self.config.max_connections
        if limit and len(self.clients) >= limit:
            return False
        return self.hub.accepting

    def opened(self, conn: Connection) -> None:
        self.clients.add(conn)
        self.hub.connections += 1
        self.hub.by_id[conn.id] = conn
        self.opened_total += 1
        if conn.auth_error is not None:
            self.hub.stats.auth_failures += 1
            self._refused.add(conn.id)
            conn.close(closecodes.UNAUTHORIZED, conn.auth_error[:120])
            return
        if conn.claims is None and not self.config.anonymous and not self.mode.authenticates_later:
            self.hub.stats.auth_failures += 1
            self._refused.add(conn.id)
            conn.close(closecodes.UNAUTHORIZED, "authentication required: pass ?token=<JWT>")
            return
        try:
            self.mode.on_open(conn)
        except Exception:
            log.exception("%s: mode %s failed on open", self.prefix, self.mode.name)
            conn.close(closecodes.INTERNAL_ERROR, "Internal error")

    def received(self, conn: Connection, data: str | bytes) -> None:
        if conn.id not in self.hub.by_id or not conn.is_open or conn.id in self._refused:
            return  # closing or closed: nothing more reaches the mode (or the application)
        self.messages_in += 1
        if self._rate and not self._allow(conn):
            self.hub.stats.rate_limited += 1
            conn.close(closecodes.RATE_LIMITED,
                       f"rate limit: more than {self._rate:g} messages/s")
            return
        try:
            self.mode.on_message(conn, data)
        except Exception:
            log.exception("%s: mode %s failed on a message", self.prefix, self.mode.name)
            conn.close(closecodes.INTERNAL_ERROR, "Internal error")

    def _allow(self, conn: Connection) -> bool:
        """Token bucket: ``rate_limit`` per second, ``rate_burst`` at once."""
        now = self.hub.loop.time()
        tokens, last = self._buckets.get(conn.id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[conn.id] = (tokens, now)
            return False
        self._buckets[conn.id] = (tokens - 1.0, now)
        return True

    def closed(self, conn: Connection, code: int, reason: str) -> None:
        if conn not in self.clients:
            return
        self.clients.discard(conn)
        self.closed_total += 1
        self.hub.connections -= 1
        self.hub.by_id.pop(conn.id, None)
        self._buckets.pop(conn.id, None)
        self.hub.channels.connection_closed(conn)
        if conn.id in self._refused:
            self._refused.discard(conn.id)
            return
        try:
            self.mode.on_close(conn, code, reason)
        except Exception:
            log.exception("%s: mode %s failed on close", self.prefix, self.mode.name)
