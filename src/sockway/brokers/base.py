"""The broker interface.

Every channel is an ordered stream of :class:`Publication` s. The broker assigns each
publication the next *offset* of its channel and keeps the channel's *epoch*: a random
string that changes whenever the channel's history is lost or reset, so that a client
holding ``(offset, epoch)`` can tell "I missed offsets 42..57" (recoverable from
history) from "that history is gone" (not recoverable).

A publication's data is held as its encoding from the moment it comes in (a
:class:`~sockway.jsonutil.Json`, or ``bytes`` for binary data), never as a parsed value:
history is counted and bounded in bytes, and an array of ten thousand empty objects
costs what its JSON costs, not ten thousand Python dicts.

Methods may answer synchronously (the memory broker does: no task, no await on the hot
path) or return an awaitable (network brokers); callers go through :func:`resolve`
when they need the value, and check ``isinstance(result, ...)`` on hot paths.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sockway.jsonutil import Json

__all__ = [
    "ENTRY_OVERHEAD",
    "Broker",
    "BrokerUnavailable",
    "ChannelLimit",
    "Data",
    "HistoryPolicy",
    "HistoryResult",
    "MaybeAwaitable",
    "Publication",
    "StreamPosition",
    "as_data",
    "data_size",
    "entry_cost",
    "new_epoch",
    "newest_within",
    "resolve",
    "wait_subscribed",
]

T = TypeVar("T")
MaybeAwaitable = T | Awaitable[T]

Data = Json | bytes
"""A publication's data: a JSON value as its encoding, or binary data (a raw WebSocket
client's binary message on a broadcast endpoint)."""


def data_size(data: Data) -> int:
    """Bytes of publication data: its JSON encoding, or the binary data."""
    return len(data.raw) if isinstance(data, Json) else len(data)


def as_data(value: Any) -> Data:
    """``value`` as publication data: :class:`Json` and ``bytes`` as they are, other
    binary types as ``bytes``, any other value encoded once as JSON."""
    if isinstance(value, (Json, bytes)):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return Json.encode(value)


def new_epoch() -> str:
    return os.urandom(4).hex()


async def resolve(value: MaybeAwaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value  # type: ignore[return-value]


@dataclass(slots=True, frozen=True)
class StreamPosition:
    offset: int
    epoch: str


@dataclass(slots=True)
class Publication:
    channel: str
    offset: int
    epoch: str
    data: Data
    """A JSON value as its encoding, or binary data; never a parsed value (see the
    module docstring)."""
    info: dict | None = None
    """Who published it (``{"conn": ..., "user": ...}``), when a client did."""
    time: float = field(default_factory=time.time)

    @property
    def size(self) -> int:
        """Bytes of the data: its JSON encoding, or the binary data."""
        return data_size(self.data)

    def as_dict(self) -> dict:
        out = {"channel": self.channel, "offset": self.offset, "epoch": self.epoch,
               "data": self.data, "time": self.time}
        if self.info:
            out["info"] = self.info
        return out


@dataclass(slots=True, frozen=True)
class HistoryPolicy:
    size: int = 0
    """Publications kept per channel (0: none)."""
    ttl: float = 0.0
    """Seconds a publication is kept (0: until pushed out by ``size``)."""
    max_bytes: int = 0
    """Bytes of history kept per channel, counted by :func:`entry_cost` (0: no bound
    in bytes): the oldest publications go first, and a publication larger than the
    whole bound is delivered but not kept."""


ENTRY_OVERHEAD = 500
"""Bytes a publication costs in history besides its data, counted in every bound in
bytes (``history_max_bytes``, ``node_history_max_bytes``). Measured (RSS) for the
memory engine: 490 bytes for a client's publication (the Publication, its info with
its own connection id, offset, time, the data's wrapper and header, the queue's slot),
240 for the application's. The Redis engine and the NATS engine's view count the same,
so that every engine keeps the same publications."""


def entry_cost(pub: Publication) -> int:
    """What a publication counts for in history: its data's bytes plus
    :data:`ENTRY_OVERHEAD`."""
    return data_size(pub.data) + ENTRY_OVERHEAD


def newest_within(pubs: list[Publication], max_bytes: int) -> list[Publication]:
    """The newest of ``pubs`` (oldest first) whose costs add up to ``max_bytes`` at
    most: what a channel with that bound keeps (all of them when ``max_bytes`` is 0)."""
    if not max_bytes:
        return pubs
    total = 0
    for i in range(len(pubs) - 1, -1, -1):
        total += entry_cost(pubs[i])
        if total > max_bytes:
            return pubs[i + 1:]
    return pubs


@dataclass(slots=True)
class HistoryResult:
    publications: list[Publication]
    position: StreamPosition
    """The channel's latest offset and epoch."""
    recovered: bool = True
    """For a query ``since`` a position: True when ``publications`` is exactly
    everything after it (same epoch, nothing expired in between)."""


class ChannelLimit(Exception):
    """A new channel was refused: the node holds its maximum number of channels
    (``[server] max_channels``). Existing channels keep working."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this node holds its maximum of {limit} channels (max_channels); "
                         "new channels are refused until some are released")
        self.limit = limit


class BrokerUnavailable(Exception):
    """The backend cannot be reached. The operation did not happen, except a publish cut
    off in flight, which may have (the caller cannot know: the answer was lost)."""


async def _no_command(command: dict) -> dict:
    return {"error": {"code": "unavailable", "message": "this node runs no commands", "status": 503}}


async def _no_relay(payload: bytes) -> bytes:
    return b""


class Broker(ABC):
    """Cross-node fan-out, history and presence for channels."""

    name = "?"

    def __init__(self) -> None:
        self.on_publication: Callable[[Publication], None] = lambda pub: None
        self.on_presence: Callable[[str, str, dict | None], None] = lambda ch, conn, info: None
        """Called with (channel, connection id, info) on join, info None on leave."""
        self.node_id = ""
        """This node's id (connection ids start with it); set by the hub's Commands."""
        self.on_command: Callable[[dict], Awaitable[dict]] = _no_command
        """Runs a command on this node (one forwarded by another node, or one that came
        in through the engine's own command input) and answers ``{"result": ...}`` or
        ``{"error": {"code", "message", "status"}}``; set by the hub's Commands."""
        self.on_relay: Callable[[bytes], Awaitable[bytes]] = _no_relay
        """Answers a request another node relayed here with :meth:`relay` (the SockJS
        requests of a session this node owns); set by the edge (edge.sockjs_relay)."""

    def forward(self, node: str, command: dict, timeout: float) -> Awaitable[dict] | None:
        """Run ``command`` on ``node`` (where its connection lives) and return its answer
        (as :attr:`on_command` gives it). ``None``: this engine has no other node (the
        caller then runs it here, and a connection that is not here is not found).
        Engines raise :class:`LookupError` when the node is not reachable and
        :class:`TimeoutError` when it does not answer within ``timeout`` seconds."""
        return None

    # -- SockJS sessions shared by the nodes -------------------------------------------
    #
    # A SockJS session over HTTP is many requests (polls, sends, a stream reopened after
    # its response limit). Engines that set ``shares_sessions`` let every node serve any
    # of them: the node that opens a session claims it (a record "session -> owner node"
    # with a TTL, kept alive by the engine while the node holds the claim), and the other
    # nodes relay the session's requests to that owner (edge.sockjs_relay). The memory
    # engine has one node: nothing to share.

    shares_sessions = False
    """Whether :meth:`session_claim`, :meth:`session_owner`, :meth:`session_release` and
    :meth:`relay` work (and sessions are shared, unless the engine's ``sessions=off``)."""

    def session_claim(self, key: str) -> Awaitable[str]:
        """Become the owner of session ``key`` unless a node already is; returns the
        owner's node id (:attr:`node_id` when this node now owns it). From the call on
        the engine keeps this node's claim alive (refreshes its TTL, re-creates it after
        an outage) until :meth:`session_release`, even when the call itself fails with
        :class:`BrokerUnavailable`."""
        raise NotImplementedError

    def session_owner(self, key: str) -> Awaitable[str | None]:
        """The node that owns session ``key``, or None."""
        raise NotImplementedError

    def session_release(self, key: str) -> Awaitable[None] | None:
        """This node no longer owns session ``key``: stop refreshing it and delete the
        record if it is still this node's."""
        raise NotImplementedError

    def relay(self, node: str, payload: bytes, timeout: float) -> Awaitable[bytes]:
        """Send ``payload`` to ``node``'s :attr:`on_relay` and return its answer. Raises
        :class:`LookupError` when no such node is listening (it is gone),
        :class:`TimeoutError` when it does not answer within ``timeout`` seconds and
        :class:`BrokerUnavailable` when the broker cannot be reached. Payloads and answers
        are bytes of any size; one node's requests reach the other in the order they
        were sent."""
        raise NotImplementedError

    def set_limits(self, max_channels: int, history_bytes: int) -> None:  # noqa: B027 - optional
        """Bounds for engines that keep channels in this process: channels at most
        (``[server] max_channels``) and bytes of history of all channels together
        (``[server] node_history_max_bytes``). Network engines keep neither (their
        history is in the broker) and ignore them."""

    def app_bridges(self, hub: Any) -> list:
        """Application event outputs and command inputs the engine itself provides
        (objects with ``start()`` and ``stop()``), started with the gateway's bridges."""
        return []

    async def start(self) -> None:  # noqa: B027 - optional for engines without a backend
        """Connect to the backend."""

    async def stop(self) -> None:  # noqa: B027
        """Disconnect."""

    @property
    def ready(self) -> bool:
        """Whether the backend is reachable (reported by /readyz and metrics)."""
        return True

    def describe(self) -> dict:
        return {"engine": self.name, "ready": self.ready}

    @abstractmethod
    def publish(self, channel: str, data: Any, policy: HistoryPolicy,
                info: dict | None = None) -> MaybeAwaitable[Publication]:
        """Append to the channel and deliver to every node with interest in it.
        ``data`` is made :data:`Data` with :func:`as_data`. Raises :class:`ChannelLimit`
        when the channel is new and the node cannot hold another one."""

    @abstractmethod
    def interest(self, channel: str, on: bool) -> MaybeAwaitable[None]:
        """This node starts (``on``) or stops needing the channel's publications."""

    async def subscribed(self, channel: str, timeout: float = 5.0) -> bool:
        """After :meth:`interest`: wait until the channel's live publications reach this
        node (the backend confirmed the subscription); False if it did not within
        ``timeout`` seconds. Engines without a backend are there at once."""
        return True

    @abstractmethod
    def history(self, channel: str, policy: HistoryPolicy, since: StreamPosition | None = None,
                limit: int | None = None) -> MaybeAwaitable[HistoryResult]:
        """Publications kept for the channel: all of them, or those after ``since``
        (then ``recovered`` says whether that is exactly what was missed)."""

    @abstractmethod
    def reset_history(self, channel: str) -> MaybeAwaitable[StreamPosition]:
        """Drop the channel's history; starts a new epoch."""

    @abstractmethod
    def presence_join(self, channel: str, conn_id: str, info: dict) -> MaybeAwaitable[None]:
        ...

    @abstractmethod
    def presence_leave(self, channel: str, conn_id: str) -> MaybeAwaitable[None]:
        ...

    @abstractmethod
    def presence(self, channel: str) -> MaybeAwaitable[dict[str, dict]]:
        """Connection id -> info of everyone present in the channel."""


async def wait_subscribed(pending: dict[str, Any], interest: set[str], channel: str, timeout: float) -> bool:
    """:meth:`Broker.subscribed` for engines that keep, per channel, the futures of
    subscriptions the backend has not confirmed yet (``pending``)."""
    futures = list(pending.get(channel, ()))
    if not futures:
        return channel in interest
    done, _ = await asyncio.wait(futures, timeout=timeout)
    return len(done) == len(futures) and all(not f.cancelled() and f.exception() is None for f in done)
