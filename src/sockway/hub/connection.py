"""What the hub and the endpoint modes see of a client, whatever its transport."""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING, ClassVar

from sockway.hub.message import OutMessage

if TYPE_CHECKING:
    from sockway.hub.endpoint import Endpoint

__all__ = ["NODE_ID", "Connection", "ConnectionInfo", "new_connection_id", "node_of"]

_counter = itertools.count(1)
NODE_ID = os.urandom(4).hex()
"""This process's id in the cluster (random; 8 hex digits)."""


def new_connection_id() -> str:
    """Unique within the cluster: ``<node id>.<counter>``. The node part tells any node
    where a connection lives, so commands for it can be forwarded there."""
    return f"{NODE_ID}.{next(_counter):x}"


def node_of(conn_id: str) -> str:
    return conn_id.partition(".")[0]


class ConnectionInfo:
    """Request metadata of the connection's opening request, kept only for endpoints
    whose mode asks for it (it costs about 1 KiB per connection)."""

    __slots__ = ("headers", "path", "query", "remote")

    def __init__(
        self,
        remote: str,
        path: str = "",
        query: str = "",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.remote = remote
        self.path = path
        self.query = query
        self.headers = headers

    def as_dict(self) -> dict:
        return {
            "remote": self.remote,
            "path": self.path,
            "query": self.query,
            "headers": dict(self.headers),
        }


class Connection:
    """Base of every client connection.

    Subclasses implement :meth:`push` (queue bytes already encoded with
    ``encoding_key``), :meth:`close` and :meth:`flush`. Nothing here awaits: sending
    queues and returns, so a slow client never delays others.
    """

    __slots__ = ("auth_error", "channels", "claims", "endpoint", "event_seq", "id", "info", "opened_at",
                 "remote", "user")

    transport_name: ClassVar[str] = "?"
    encoding_key: int = 0

    def __init__(self, endpoint: Endpoint, remote: str, info: ConnectionInfo | None) -> None:
        self.id = new_connection_id()
        self.endpoint = endpoint
        self.remote = remote
        self.info = info
        self.user: str | None = None
        self.opened_at = time.time()
        self.claims: dict | None = None
        """Verified token claims (or what the application said of the client)."""
        self.auth_error: str | None = None
        """Why the token the client presented was refused (it is then closed with 4001)."""
        self.channels: set[str] | None = None
        """Channels this connection is subscribed to on this node."""
        self.event_seq = 0
        """Sequence number of the connection's last application event."""

    def push(self, encoded: bytes) -> None:
        raise NotImplementedError

    def send(self, message: OutMessage | str | bytes) -> None:
        """Send one message to this connection."""
        if not isinstance(message, OutMessage):
            message = OutMessage(message)
        self.push(message.encode(self.encoding_key))

    def close(self, code: int = 1000, reason: str = "") -> None:
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.transport_name} {self.remote}>"
