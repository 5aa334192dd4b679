"""Endpoint modes: what an endpoint does with its clients' messages.

A mode is a small class with three synchronous callbacks. New modes (``channels``,
``app``) plug in by subclassing :class:`Mode` and registering in :data:`MODES`.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, ClassVar

from sockway.hub.message import OutMessage

if TYPE_CHECKING:
    from sockway.hub.connection import Connection
    from sockway.hub.endpoint import Endpoint

__all__ = ["MODES", "BroadcastMode", "EchoMode", "Mode", "create_mode", "register_mode"]


class Mode:
    name: ClassVar[str] = "?"
    endpoint: Endpoint

    def bind(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def on_open(self, conn: Connection) -> None:
        pass

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        pass

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        pass

    async def start(self) -> None:
        """Start background work (called once the server runs)."""

    async def stop(self) -> None:
        """Stop background work (called on shutdown)."""


class EchoMode(Mode):
    """Every message goes back to its sender, text as text and binary as binary."""

    name = "echo"

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        conn.send(OutMessage(data))


class BroadcastMode(Mode):
    """Every message goes to every client of the endpoint, the sender included; the
    last ``history`` messages are replayed to each new client (the talk's chat).

    Memory: ``history`` messages with their encodings (about twice the message size
    each, plus 200 bytes)."""

    name = "broadcast"

    def __init__(self, history: int = 0) -> None:
        self.history: collections.deque[OutMessage] = collections.deque(maxlen=history or None)
        self.keep = history

    def on_open(self, conn: Connection) -> None:
        for message in self.history:
            conn.send(message)

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        self.publish(data)

    def publish(self, data: str | bytes | OutMessage) -> int:
        message = data if isinstance(data, OutMessage) else OutMessage(data)
        if self.keep:
            self.history.append(message)
        return self.endpoint.clients.publish(message)


MODES: dict[str, type[Mode]] = {"echo": EchoMode, "broadcast": BroadcastMode}


def register_mode(cls: type[Mode]) -> type[Mode]:
    MODES[cls.name] = cls
    return cls


def create_mode(name: str, config) -> Mode:
    try:
        cls = MODES[name]
    except KeyError:
        raise ValueError(
            f"unknown mode {name!r} for endpoint {config.prefix}; known modes: "
            + ", ".join(sorted(MODES))
        ) from None
    if cls is BroadcastMode:
        return BroadcastMode(config.history)
    return cls()
