"""The embedded broker: one process, no service to run, everything synchronous.

History per channel is a deque bounded by the namespace's ``history_size``,
``history_max_bytes`` and ``history_ttl``; each publication in it is its data's encoding
plus :data:`~sockway.brokers.base.ENTRY_OVERHEAD` bytes (never a parsed value, nor the
encodings sent to clients: those are made per delivery). All channels' history together
is bounded by ``node_history_max_bytes``: past it, the channels published to least
recently lose their oldest publications first (a client recovering past them gets
``recovered: false``, as when history expires).

A channel's state (offset, epoch, history) is dropped as soon as it has no history, no
presence and no interested node: after a publication nobody receives or keeps (an
application publishing to ``user:<id>`` channels of users who are offline must not grow
the process), and when its last subscriber leaves. Queries about a channel that has no
state (``history`` of a name nobody uses) answer from a blank position without creating
any. The next publication starts a new epoch, so a client holding an old position
learns that it cannot recover.

One exception keeps recovery exact: a channel that keeps history but has had no
publication yet. A client that subscribed to it holds position (0, epoch); if the
channel were forgotten when that client left, publications made while it is away would
start a new epoch and its position could not be recovered although history holds every
one of them. Such a channel's position is kept for ``IDLE_KEEP`` seconds (about 150
bytes each), then forgotten.

Channels held at most: ``max_channels`` (a channel's state costs about 300 bytes, plus
900 while it holds history). A
publication that would start a new channel beyond it first makes room by forgetting the
oldest kept position, else the history of the channel published to least recently that
nobody here is subscribed to (among the :data:`EVICT_SCAN` least recent); only when
there is none is it refused (:class:`~sockway.brokers.base.ChannelLimit`). Channels
that subscribers here need are admitted by the hub, under the same bound
(hub.channels).
"""

from __future__ import annotations

import collections
import time
from typing import Any

from sockway.brokers.base import (
    Broker,
    ChannelLimit,
    HistoryPolicy,
    HistoryResult,
    Publication,
    StreamPosition,
    as_data,
    entry_cost,
    new_epoch,
)

__all__ = ["MemoryBroker"]


IDLE_KEEP = 300.0
EVICT_SCAN = 64
"""Channels with history looked at, least recently published first, for one that
nobody is subscribed to when a new channel needs room."""
DEFAULT_MAX_CHANNELS = 100_000
DEFAULT_HISTORY_BYTES = 256 << 20


_NO_ITEMS: tuple = ()
"""A stream's ``items`` while it has none: an empty deque costs 760 bytes (its first
block), which a channel with subscribers and no history would hold for nothing."""


class _Stream:
    __slots__ = ("bytes", "epoch", "history", "items", "offset")

    def __init__(self) -> None:
        self.offset = 0
        self.epoch = new_epoch()
        self.items: collections.deque[Publication] | tuple = _NO_ITEMS
        self.bytes = 0
        """What ``items`` cost (entry_cost of each)."""
        self.history = False
        """The channel keeps history (its policy said so when it was last used)."""


class MemoryBroker(Broker):
    name = "memory"

    def __init__(self, max_channels: int = DEFAULT_MAX_CHANNELS,
                 history_bytes: int = DEFAULT_HISTORY_BYTES) -> None:
        super().__init__()
        self._streams: dict[str, _Stream] = {}
        self._interest: set[str] = set()
        self._presence: dict[str, dict[str, dict]] = {}
        self._idle: dict[str, float] = {}
        """Channels kept only for their position (see the module docstring), oldest first."""
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Channels holding history, published to least recently first."""
        self._bytes = 0
        """What all histories cost together."""
        self.max_channels = max_channels
        self.history_bytes = history_bytes
        self.evicted_publications = 0
        self.evicted_channels = 0
        self.refused_channels = 0

    def set_limits(self, max_channels: int, history_bytes: int) -> None:
        self.max_channels = max_channels
        self.history_bytes = history_bytes

    # -- channels ------------------------------------------------------------------------

    def _stream(self, channel: str, capped: bool = True) -> _Stream:
        """The channel's state, made if it has none, within ``max_channels`` when
        ``capped``: not for a channel made and forgotten within the call (a publication
        nobody receives or keeps), nor one the hub admitted for its subscribers."""
        stream = self._streams.get(channel)
        if stream is None:
            if capped and len(self._streams) >= self.max_channels:
                self._make_room()
            stream = self._streams[channel] = _Stream()
        return stream

    def _make_room(self) -> None:
        self._prune_idle()
        if self._idle:
            channel = next(iter(self._idle))
            del self._idle[channel]
            self._drop(channel)
            return
        for scanned, channel in enumerate(self._recent):
            if scanned >= EVICT_SCAN:
                break
            if channel not in self._interest and channel not in self._presence:
                stream = self._streams[channel]
                self.evicted_publications += len(stream.items)
                self._clear(channel, stream)
                self._drop(channel)
                return
        self.refused_channels += 1
        raise ChannelLimit(self.max_channels)

    def _drop(self, channel: str) -> None:
        stream = self._streams.pop(channel, None)
        if stream is not None:
            self.evicted_channels += 1
            if stream.items:
                self._clear(channel, stream)

    def _forget_if_idle(self, channel: str, stream: _Stream) -> None:
        if not stream.items and channel not in self._interest and channel not in self._presence:
            if stream.history and stream.offset == 0:
                self._idle.pop(channel, None)
                self._idle[channel] = time.monotonic()
            else:
                self._streams.pop(channel, None)
        self._prune_idle()

    def _prune_idle(self) -> None:
        horizon = time.monotonic() - IDLE_KEEP
        idle = self._idle
        while idle:
            channel, since = next(iter(idle.items()))
            if since > horizon:
                break
            del idle[channel]
            stream = self._streams.get(channel)
            if (stream is not None and not stream.items and stream.offset == 0
                    and channel not in self._interest and channel not in self._presence):
                del self._streams[channel]

    def describe(self) -> dict:
        return {**super().describe(), "channels": len(self._streams),
                "presence_channels": len(self._presence), "history_bytes": self._bytes,
                "history_channels": len(self._recent), "evicted_publications": self.evicted_publications,
                "evicted_channels": self.evicted_channels, "refused_channels": self.refused_channels}

    # -- history -------------------------------------------------------------------------

    def _append(self, channel: str, stream: _Stream, pub: Publication) -> None:
        cost = entry_cost(pub)
        if stream.items is _NO_ITEMS:
            stream.items = collections.deque()
        stream.items.append(pub)
        stream.bytes += cost
        self._bytes += cost
        self._recent[channel] = None
        self._recent.move_to_end(channel)

    def _popleft(self, channel: str, stream: _Stream) -> None:
        cost = entry_cost(stream.items.popleft())  # type: ignore[union-attr]
        stream.bytes -= cost
        self._bytes -= cost
        if not stream.items:
            stream.items = _NO_ITEMS
            self._recent.pop(channel, None)

    def _clear(self, channel: str, stream: _Stream) -> None:
        self._bytes -= stream.bytes
        stream.bytes = 0
        stream.items = _NO_ITEMS
        self._recent.pop(channel, None)

    def _trim(self, channel: str, stream: _Stream, policy: HistoryPolicy, now: float) -> None:
        items = stream.items
        while len(items) > policy.size:
            self._popleft(channel, stream)
        if policy.max_bytes:
            while items and stream.bytes > policy.max_bytes:
                self._popleft(channel, stream)
        if policy.ttl:
            horizon = now - policy.ttl
            while items and items[0].time < horizon:
                self._popleft(channel, stream)

    def _within_budget(self) -> None:
        """All histories within ``history_bytes``: the oldest publications of the
        channels published to least recently go first."""
        while self._bytes > self.history_bytes and self._recent:
            channel = next(iter(self._recent))
            stream = self._streams[channel]
            while stream.items and self._bytes > self.history_bytes:
                self._popleft(channel, stream)
                self.evicted_publications += 1
            if not stream.items and channel not in self._interest:
                self._forget_if_idle(channel, stream)

    def publish(self, channel: str, data: Any, policy: HistoryPolicy,
                info: dict | None = None) -> Publication:
        data = as_data(data)
        stream = self._stream(channel, capped=policy.size > 0 and channel not in self._interest)
        stream.offset += 1
        stream.history = policy.size > 0
        self._idle.pop(channel, None)
        now = time.time()
        pub = Publication(channel, stream.offset, stream.epoch, data, info, now)
        if policy.size:
            self._append(channel, stream, pub)
            self._trim(channel, stream, policy, now)
            self._within_budget()
        if channel in self._interest:
            self.on_publication(pub)
        elif self._streams.get(channel) is stream:
            self._forget_if_idle(channel, stream)
        return pub

    def interest(self, channel: str, on: bool) -> None:
        if on:
            self._interest.add(channel)
            self._idle.pop(channel, None)
        else:
            self._interest.discard(channel)
            stream = self._streams.get(channel)
            if stream is not None:
                # Keep offset and epoch while history exists; otherwise forget the channel
                # (a later subscriber with an old position then gets recovered=False).
                self._forget_if_idle(channel, stream)

    def history(self, channel: str, policy: HistoryPolicy, since: StreamPosition | None = None,
                limit: int | None = None) -> HistoryResult:
        stream = self._streams.get(channel)
        if stream is None:
            if channel not in self._interest:
                # Nothing is known of it, and nobody here listens: answer without
                # creating state for a name that may never be used again.
                position = StreamPosition(0, "")
                return HistoryResult([], position, since is None or since == position)
            # A subscriber here needs its position: the hub admitted the channel.
            stream = self._streams[channel] = _Stream()
        stream.history = policy.size > 0
        self._trim(channel, stream, policy, time.time())
        if channel not in self._interest:
            self._forget_if_idle(channel, stream)  # its history may just have expired
        items = list(stream.items)
        position = StreamPosition(stream.offset, stream.epoch)
        if since is None:
            if limit is not None:
                items = items[-limit:] if limit > 0 else []
            return HistoryResult(items, position, True)
        if since.epoch != stream.epoch or since.offset > stream.offset:
            return HistoryResult([], position, False)
        missed = [p for p in items if p.offset > since.offset]
        complete = since.offset >= stream.offset or (bool(missed) and missed[0].offset == since.offset + 1)
        if limit is not None and len(missed) > limit:
            missed = missed[:limit]
            complete = False
        return HistoryResult(missed, position, complete)

    def reset_history(self, channel: str) -> StreamPosition:
        stream = self._stream(channel)
        self._clear(channel, stream)
        stream.epoch = new_epoch()
        return StreamPosition(stream.offset, stream.epoch)

    def presence_join(self, channel: str, conn_id: str, info: dict) -> None:
        members = self._presence.setdefault(channel, {})
        new = conn_id not in members
        members[conn_id] = info
        if new:
            self.on_presence(channel, conn_id, info)

    def presence_leave(self, channel: str, conn_id: str) -> None:
        members = self._presence.get(channel)
        if members is not None and members.pop(conn_id, None) is not None:
            if not members:
                del self._presence[channel]
            self.on_presence(channel, conn_id, None)

    def presence(self, channel: str) -> dict[str, dict]:
        return dict(self._presence.get(channel, {}))
