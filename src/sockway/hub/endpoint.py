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
    """

    def __init__(self, config: EndpointConfig, mode: Mode, hub: Hub) -> None:
        self.config = config
        self.prefix = config.prefix
        self.mode = mode
        self.hub = hub
        self.clients = Group()
        self.messages_in = 0
        self.opened_total = 0
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
        self.opened_total += 1
        try:
            self.mode.on_open(conn)
        except Exception:
            log.exception("%s: mode %s failed on open", self.prefix, self.mode.name)
            conn.close(closecodes.INTERNAL_ERROR, "Internal error")

    def received(self, conn: Connection, data: str | bytes) -> None:
        self.messages_in += 1
        try:
            self.mode.on_message(conn, data)
        except Exception:
            log.exception("%s: mode %s failed on a message", self.prefix, self.mode.name)
            conn.close(closecodes.INTERNAL_ERROR, "Internal error")

    def closed(self, conn: Connection, code: int, reason: str) -> None:
        if conn not in self.clients:
            return
        self.clients.discard(conn)
        self.hub.connections -= 1
        try:
            self.mode.on_close(conn, code, reason)
        except Exception:
            log.exception("%s: mode %s failed on close", self.prefix, self.mode.name)
