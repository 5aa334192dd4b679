"""The embedded broker: one process, no service to run, everything synchronous.

History per channel is a deque bounded by the namespace's ``history_size`` and
``history_ttl``: memory is at most ``size`` publications per channel (each about 300
bytes plus its data and the encodings computed for it). A channel's state (offset,
epoch, history) is dropped as soon as it has no history, no presence and no interested
node: after a publication nobody receives or keeps (an application publishing to
``user:<id>`` channels of users who are offline must not grow the process), and when
its last subscriber leaves. Queries about a channel that has no state (``history`` of
a name nobody uses) answer from a blank position without creating any. The next
publication starts a new epoch, so a client holding an old position learns that it
cannot recover.

One exception keeps recovery exact: a channel that keeps history but has had no
publication yet. A client that subscribed to it holds position (0, epoch); if the
channel were forgotten when that client left, publications made while it is away would
start a new epoch and its position could not be recovered although history holds every
one of them. Such a channel's position is kept for ``IDLE_KEEP`` seconds (about 150
bytes each), then forgotten.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from sockway.brokers.base import (
    Broker,
    HistoryPolicy,
    HistoryResult,
    Publication,
    StreamPosition,
    new_epoch,
)

__all__ = ["MemoryBroker"]


IDLE_KEEP = 300.0


class _Stream:
    __slots__ = ("epoch", "history", "items", "offset")

    def __init__(self) -> None:
        self.offset = 0
        self.epoch = new_epoch()
        self.items: collections.deque[Publication] = collections.deque()
        self.history = False
        """The channel keeps history (its policy said so when it was last used)."""


class MemoryBroker(Broker):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._streams: dict[str, _Stream] = {}
        self._interest: set[str] = set()
        self._presence: dict[str, dict[str, dict]] = {}
        self._idle: dict[str, float] = {}
        """Channels kept only for their position (see the module docstring), oldest first."""

    def _stream(self, channel: str) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream()
        return stream

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
                "presence_channels": len(self._presence)}

    @staticmethod
    def _trim(stream: _Stream, policy: HistoryPolicy, now: float) -> None:
        items = stream.items
        while len(items) > policy.size:
            items.popleft()
        if policy.ttl:
            horizon = now - policy.ttl
            while items and items[0].time < horizon:
                items.popleft()

    def publish(self, channel: str, data: Any, policy: HistoryPolicy,
                info: dict | None = None) -> Publication:
        stream = self._stream(channel)
        stream.offset += 1
        stream.history = policy.size > 0
        self._idle.pop(channel, None)
        now = time.time()
        pub = Publication(channel, stream.offset, stream.epoch, data, info, now)
        if policy.size:
            stream.items.append(pub)
            self._trim(stream, policy, now)
        if channel in self._interest:
            self.on_publication(pub)
        else:
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
            stream = self._stream(channel)
        stream.history = policy.size > 0
        self._trim(stream, policy, time.time())
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
        stream.items.clear()
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
