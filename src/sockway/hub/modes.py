"""Endpoint modes: what an endpoint does with its clients' messages.

A mode is a small class with synchronous callbacks. ``echo`` and ``broadcast`` are
here; ``channels`` (:mod:`.channels_mode`) and ``app`` (:mod:`.app_mode`) register
themselves in :data:`MODES` the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from sockway.brokers.base import HistoryPolicy, Publication, StreamPosition
from sockway.hub.channels import RAW, SubscribeResult, data_text, publication_message
from sockway.hub.message import OutMessage

if TYPE_CHECKING:
    from sockway.hub.connection import Connection
    from sockway.hub.endpoint import Endpoint

__all__ = ["MODES", "BroadcastMode", "EchoMode", "Mode", "create_mode", "register_mode"]


class Mode:
    name: ClassVar[str] = "?"
    authenticates_later: ClassVar[bool] = False
    """The mode lets an unauthenticated client in and authenticates it itself."""
    needs_info: ClassVar[bool] = False
    """Keep request metadata (headers, query) of each connection."""
    channel_format: ClassVar[int] = RAW
    endpoint: Endpoint

    def bind(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    @property
    def hub(self):
        return self.endpoint.hub

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

    # -- what the application's commands do, per mode ----------------------------------

    def send_direct(self, conn: Connection, data: Any) -> None:
        """The ``send`` command: the data itself (a string as is, else JSON text)."""
        conn.send(OutMessage(data if isinstance(data, (str, bytes)) else data_text(data)))

    def server_subscribe(self, conn: Connection, channel: str, since: StreamPosition | None):
        """The ``subscribe`` command: publications of ``channel`` reach ``conn`` (as the
        bare data; channels mode wraps them in its envelope). Missed ones since
        ``since`` are delivered first."""
        fmt = self.channel_format

        def ready(result: SubscribeResult) -> None:
            for pub in result.publications:
                conn.send(publication_message(pub, fmt))

        result = self.hub.channels.subscribe(conn, channel, fmt, since, ready=ready)
        if isinstance(result, SubscribeResult):
            return result.as_dict(with_publications=False)
        return _as_dict_later(result)

    def server_unsubscribe(self, conn: Connection, channel: str) -> bool:
        return self.hub.channels.unsubscribe(conn, channel)


async def _as_dict_later(awaitable) -> dict:
    return (await awaitable).as_dict(with_publications=False)


class EchoMode(Mode):
    """Every message goes back to its sender, text as text and binary as binary."""

    name = "echo"

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        conn.send(OutMessage(data))


class BroadcastMode(Mode):
    """Every message goes to every client of the endpoint, the sender included; the
    last ``history`` messages are replayed to each new client (the talk's chat).

    The endpoint is a channel (``channel`` setting, default: the prefix) with history
    kept by the broker, so the application can publish into it, and with a distributed
    broker every node's clients share it. Memory: ``history`` messages, each its size
    plus 500 bytes, within the namespace's ``history_max_bytes``."""

    name = "broadcast"

    def __init__(self, history: int = 0, channel: str | None = None) -> None:
        self.keep = history
        self.channel = channel or ""

    def bind(self, endpoint: Endpoint) -> None:
        super().bind(endpoint)
        self.channel = self.channel or endpoint.config.channel or endpoint.prefix

    def on_open(self, conn: Connection) -> None:
        def ready(result: SubscribeResult) -> None:
            for pub in result.publications:
                conn.send(publication_message(pub, RAW))

        self.hub.channels.subscribe(conn, self.channel, RAW, want_history=self.keep, ready=ready)

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        self.publish(data)

    def publish(self, data: Any) -> Publication:
        return self.hub.channels.publish(self.channel, data)

    async def start(self) -> None:
        channels = self.hub.channels
        policy = channels.policy(self.channel)
        channels.set_policy(self.channel, HistoryPolicy(max(self.keep, policy.size), policy.ttl, policy.max_bytes))


MODES: dict[str, type[Mode]] = {"echo": EchoMode, "broadcast": BroadcastMode}


def register_mode(cls: type[Mode]) -> type[Mode]:
    MODES[cls.name] = cls
    return cls


def create_mode(name: str, config) -> Mode:
    load_builtin_modes()
    try:
        cls = MODES[name]
    except KeyError:
        raise ValueError(
            f"unknown mode {name!r} for endpoint {config.prefix}; known modes: "
            + ", ".join(sorted(MODES))
        ) from None
    if cls is BroadcastMode:
        return BroadcastMode(config.history, config.channel)
    return cls()


def load_builtin_modes() -> None:
    from sockway.hub import app_mode, channels_mode  # noqa: F401 - they register themselves
