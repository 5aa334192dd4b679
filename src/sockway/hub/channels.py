"""Channels on one node: which local connections are subscribed to what, fed by the
broker. A live publication is encoded once per *format* (the channels-protocol
envelope, or the bare data for app and broadcast endpoints) and fanned out through
:class:`Group`; its data goes into the envelope as the bytes it was published as. The
encodings live as long as the delivery: history keeps the data alone, and a replay
(recovery, a broadcast endpoint's history for a new client) encodes for its one
recipient.

Channels held at most: ``[server] max_channels``. A subscription that would add a
channel beyond it is refused (:class:`~sockway.brokers.base.ChannelLimit`: the
channels protocol's ``channel_limit`` error, HTTP 503); existing channels, and the
channels the configuration names (broadcast endpoints', tunnels'), always work.

Recovery without gaps or duplicates, on any broker: a subscription that asks for what
it missed since ``(offset, epoch)`` is *recovering* until the broker's history answer
arrives; live publications for it meanwhile are buffered; then it receives the missed
publications, the buffered ones newer than those, and joins the live group. With the
memory broker the answer is immediate and nothing is buffered.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sockway.brokers.base import (
    Broker,
    BrokerUnavailable,
    ChannelLimit,
    HistoryPolicy,
    HistoryResult,
    Publication,
    StreamPosition,
    as_data,
)
from sockway.hub.group import Group
from sockway.hub.message import OutMessage
from sockway.hub.trace import TRACER
from sockway.jsonutil import Json, dumps_str

if TYPE_CHECKING:
    from sockway.config import NamespaceConfig, ServerConfig
    from sockway.hub.connection import Connection

__all__ = ["ENVELOPE", "RAW", "ChannelHub", "SubscribeResult", "publication_message", "valid_channel"]

log = logging.getLogger("sockway.channels")

ENVELOPE = 0
"""Channels protocol: ``{"type":"message","channel":...,"offset":...,"epoch":...,"data":...}``."""
RAW = 1
"""The data itself: a string as is, anything else as JSON text."""

CHANNEL_CHARS = r"A-Za-z0-9_.:@/=+\-"
"""The characters of a channel name (a regular-expression character class body)."""
CHANNEL_RE = re.compile(f"[{CHANNEL_CHARS}]{{1,255}}")
"""A channel name, matched whole with ``fullmatch`` (``re.match`` with ``$`` would let a
trailing newline through: ``$`` also matches before a final ``\\n``)."""


def valid_channel(name: object) -> bool:
    return isinstance(name, str) and CHANNEL_RE.fullmatch(name) is not None


def data_text(data: Any) -> str:
    """A value as RAW recipients read it: a string as is, anything else as JSON text."""
    if isinstance(data, Json):
        return data.text
    return data if isinstance(data, str) else dumps_str(data)


def publication_message(pub: Publication, fmt: int) -> OutMessage:
    """The message subscribers in format ``fmt`` receive (made for each call: a
    delivery makes it once for all its recipients)."""
    if fmt == ENVELOPE:
        return OutMessage(dumps_str({"type": "message", "channel": pub.channel,
                                     "offset": pub.offset, "epoch": pub.epoch, "data": pub.data}))
    if isinstance(pub.data, Json):
        return OutMessage(pub.data.text)
    # A binary message (a raw WebSocket client's, in broadcast mode) stays binary: raw
    # WebSocket recipients get a binary frame (RFC 6455 section 5.6), SockJS ones its
    # text (see OutMessage.quoted).
    return OutMessage(bytes(pub.data))


@dataclass(slots=True)
class SubscribeResult:
    channel: str
    position: StreamPosition
    recovered: bool
    publications: list[Publication]

    def as_dict(self, with_publications: bool = True) -> dict:
        out = {"channel": self.channel, "offset": self.position.offset,
               "epoch": self.position.epoch, "recovered": self.recovered}
        if with_publications:
            out["publications"] = [
                {"offset": p.offset, "data": p.data, "time": p.time} for p in self.publications
            ]
        return out


class _LocalChannel:
    __slots__ = ("count", "groups", "name", "recovering")

    def __init__(self, name: str) -> None:
        self.name = name
        self.groups: dict[int, Group] = {}
        self.recovering: dict[str, list[Publication]] = {}
        self.count = 0

    def deliver(self, pub: Publication) -> int:
        """Encode once per format present, for all the format's recipients."""
        delivered = 0
        for fmt, group in self.groups.items():
            delivered += group.publish(publication_message(pub, fmt))
        for buffered in self.recovering.values():
            buffered.append(pub)
        return delivered


class ChannelHub:
    """This node's subscriptions, on top of a broker."""

    def __init__(self, broker: Broker, config: ServerConfig) -> None:
        self.broker = broker
        self.config = config
        self.channels: dict[str, _LocalChannel] = {}
        self.formats: dict[str, int] = {}  # connection id -> format
        self.connections: dict[str, Connection] = {}
        self.policies: dict[str, HistoryPolicy] = {}
        self.deliveries = 0
        self.publications = 0
        self.max_channels = config.max_channels
        self.refused = 0
        """Subscriptions refused because the node held ``max_channels`` channels."""
        self.reserved: set[str] = {t.channel for t in config.tunnels} | {
            e.channel or e.prefix for e in config.endpoints if e.mode == "broadcast"}
        """Channels the configuration names: never refused, and not counted."""
        broker.set_limits(config.max_channels, config.node_history_max_bytes)
        broker.on_publication = self._on_publication
        broker.on_presence = self._on_presence

    # -- rules ----------------------------------------------------------------------------

    def namespace(self, channel: str) -> NamespaceConfig:
        return self.config.namespace(channel)

    def policy(self, channel: str) -> HistoryPolicy:
        policy = self.policies.get(channel)
        if policy is not None:
            return policy
        ns = self.namespace(channel)
        return HistoryPolicy(ns.history_size, ns.history_ttl, ns.history_max_bytes)

    def set_policy(self, channel: str, policy: HistoryPolicy) -> None:
        """History rules for one channel, overriding its namespace's (a broadcast
        endpoint's own ``history``)."""
        self.policies[channel] = policy

    # -- broker callbacks ------------------------------------------------------------------

    def _on_publication(self, pub: Publication) -> None:
        self.publications += 1
        if TRACER.active:
            TRACER.publication(pub)
        local = self.channels.get(pub.channel)
        if local is not None:
            self.deliveries += local.deliver(pub)

    def _on_presence(self, channel: str, conn_id: str, info: dict | None) -> None:
        local = self.channels.get(channel)
        if local is None or not self.namespace(channel).join_leave:
            return
        group = local.groups.get(ENVELOPE)
        if group is None:
            return
        event = {"type": "join" if info is not None else "leave", "channel": channel,
                 "conn": conn_id}
        if info is not None:
            event["info"] = info
        group.publish(OutMessage(dumps_str(event)))

    # -- publishing -------------------------------------------------------------------------

    def publish(self, channel: str, data: Any, info: dict | None = None):
        """Publish to a channel; returns the Publication (or an awaitable of it). ``data``
        is encoded here if it is not already (:func:`~sockway.brokers.base.as_data`).
        Raises ChannelLimit when the channel is new and the node is full."""
        return self.broker.publish(channel, as_data(data), self.policy(channel), info)

    # -- subscriptions ----------------------------------------------------------------------

    def is_subscribed(self, conn: Connection, channel: str) -> bool:
        return conn.channels is not None and channel in conn.channels

    def subscribe(self, conn: Connection, channel: str, fmt: int,
                  since: StreamPosition | None = None, want_history: int = 0,
                  ready: Callable[[SubscribeResult], None] | None = None,
                  ) -> SubscribeResult | Awaitable[SubscribeResult]:
        """Subscribe ``conn``. With ``since``, what it missed is part of the result (and
        ``recovered`` says whether that is all of it); with ``want_history`` (n > 0) the
        last n publications are (broadcast endpoints replay their history this way).
        Raises :class:`ChannelLimit`, before anything changes, when the channel is new
        here and the node holds ``max_channels`` channels.

        ``ready`` is called with the result at the exact point where the connection
        joins the live stream: whatever it sends to the connection (a reply, the
        missed publications) goes before any live publication."""
        if conn.channels is None:
            conn.channels = set()
        if channel in conn.channels:
            # Already subscribed: it receives everything live, so nothing is missing;
            # the answer carries the channel's current position.
            current = self.broker.history(channel, self.policy(channel), None, 0)
            if inspect.isawaitable(current):
                return self._already_async(channel, current, ready)
            return self._already(channel, current, ready)
        local = self.channels.get(channel)
        if local is None and channel not in self.reserved and self._counted() >= self.max_channels:
            self.refused += 1
            raise ChannelLimit(self.max_channels)
        conn.channels.add(channel)
        self.formats[conn.id] = fmt
        self.connections[conn.id] = conn
        if local is None:
            local = self.channels[channel] = _LocalChannel(channel)
            interest = self.broker.interest(channel, True)
            if inspect.isawaitable(interest):
                _background(interest, "channel interest")
        local.count += 1
        ns = self.namespace(channel)
        if ns.presence:
            presence = self.broker.presence_join(channel, conn.id, self.presence_info(conn))
            if inspect.isawaitable(presence):
                _background(presence, "presence join")
        local.recovering[conn.id] = []
        history = self.broker.history(channel, self.policy(channel), since,
                                      None if since is not None else want_history)
        if inspect.isawaitable(history):
            return self._finish_async(conn, local, fmt, since, want_history, history, ready)
        return self._finish(conn, local, fmt, since, want_history, history, ready)

    def _counted(self) -> int:
        """Local channels that count against ``max_channels`` (reserved ones do not)."""
        return len(self.channels) - sum(1 for name in self.reserved if name in self.channels)

    @staticmethod
    def _already(channel: str, current: HistoryResult,
                 ready: Callable[[SubscribeResult], None] | None) -> SubscribeResult:
        result = SubscribeResult(channel, current.position, True, [])
        if ready is not None:
            ready(result)
        return result

    async def _already_async(self, channel, current, ready) -> SubscribeResult:
        return self._already(channel, await current, ready)

    async def _finish_async(self, conn, local, fmt, since, want_history, history,
                            ready) -> SubscribeResult:
        try:
            result = await history
        except Exception:
            local.recovering.pop(conn.id, None)
            self._remove(conn, local.name)
            raise
        return self._finish(conn, local, fmt, since, want_history, result, ready)

    def _finish(self, conn: Connection, local: _LocalChannel, fmt: int, since: StreamPosition | None,
                want_history: int, history: HistoryResult,
                ready: Callable[[SubscribeResult], None] | None) -> SubscribeResult:
        buffered = local.recovering.pop(conn.id, [])
        if conn.channels is None or local.name not in conn.channels:
            # Unsubscribed (or closed) while the history was on its way.
            return SubscribeResult(local.name, history.position, False, [])
        publications = history.publications if (since is not None or want_history) else []
        last = publications[-1].offset if publications else (
            since.offset if since is not None else history.position.offset)
        late = [p for p in buffered if p.offset > last]
        # The reply's position is the history's: the late publications go out after the
        # reply, with their own (higher) offsets, so a client that skips offsets at or
        # below the reply's position drops none of them.
        result = SubscribeResult(local.name, history.position, history.recovered, publications)
        if ready is not None:
            ready(result)
        for pub in late:
            conn.send(publication_message(pub, fmt))
        group = local.groups.get(fmt)
        if group is None:
            group = local.groups[fmt] = Group()
        group.add(conn)
        return result

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        if conn.channels is None or channel not in conn.channels:
            return False
        self._remove(conn, channel)
        return True

    def _remove(self, conn: Connection, channel: str) -> None:
        if conn.channels is not None:
            conn.channels.discard(channel)
        local = self.channels.get(channel)
        if local is None:
            return
        local.recovering.pop(conn.id, None)
        for group in local.groups.values():
            group.discard(conn)
        local.count -= 1
        if self.namespace(channel).presence:
            presence = self.broker.presence_leave(channel, conn.id)
            if inspect.isawaitable(presence):
                _background(presence, "presence leave")
        if local.count <= 0:
            del self.channels[channel]
            interest = self.broker.interest(channel, False)
            if inspect.isawaitable(interest):
                _background(interest, "channel interest")

    def connection_closed(self, conn: Connection) -> None:
        if conn.channels:
            for channel in list(conn.channels):
                self._remove(conn, channel)
        conn.channels = None
        self.formats.pop(conn.id, None)
        self.connections.pop(conn.id, None)

    @staticmethod
    def presence_info(conn: Connection) -> dict:
        info: dict = {"conn": conn.id, "user": conn.user}
        if conn.claims and isinstance(conn.claims.get("info"), dict):
            info["info"] = conn.claims["info"]
        return info

    def stats(self) -> dict:
        return {"channels": len(self.channels), "publications": self.publications,
                "deliveries": self.deliveries, "refused_channels": self.refused}


_background_tasks: set = set()


def _background(awaitable, what: str) -> None:
    import asyncio

    async def run() -> None:
        try:
            await awaitable
        except BrokerUnavailable as exc:
            log.warning("broker %s failed: the broker is unavailable (%s)", what, exc)
        except Exception:
            log.exception("broker %s failed", what)

    task = asyncio.get_running_loop().create_task(run())
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)
