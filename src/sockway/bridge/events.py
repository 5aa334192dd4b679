"""Application events (docs/bridge.md, "Events").

Every event is one JSON object::

    {"type": "open" | "message" | "close" | ..., "id": "<node>-<n>", "conn": "<id>",
     "seq": <n>, "endpoint": "/app", "time": <unix time>, ...}

``id`` is unique across the cluster (a worker drops duplicates by it) and ``seq``
counts the events of one connection from 1 (open) upwards, so that a worker can tell
their order. Events of one connection are emitted in order; once its ``close`` has been
emitted, nothing more is emitted for it.

Events are valid UTF-8 JSON (RFC 8259 section 8.1) whatever they carry: a SockJS client
can send a lone surrogate (``"\\ud800"``, a JavaScript string is UTF-16), which has no
UTF-8 encoding; such an event is encoded with every non-ASCII character escaped
(:func:`encode_json`), which any JSON parser reads back, instead of bytes that are not
UTF-8 and that strict parsers (PHP, Go, browsers) refuse.

Each output has its own bounded queue (``event_queue_size``): an application that is
slow or down costs at most that many events of memory per output. When a queue is full,
``message`` events are dropped (and counted); ``open`` and ``close`` events are always
queued, so an application never loses track of who is connected.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sockway.jsonutil import HAVE_ORJSON, Json, binary_text, exact

if HAVE_ORJSON:
    import orjson

if TYPE_CHECKING:
    from sockway.hub.connection import Connection

__all__ = ["EventBus", "EventQueue", "encode_json"]

log = logging.getLogger("sockway.events")

ALWAYS_KEPT = frozenset({"open", "close"})


def encode_json(obj: Any) -> bytes:
    """Compact JSON that is always valid UTF-8: orjson when it can encode ``obj``;
    otherwise (lone surrogates, integers over 64 bits, deep nesting) the standard
    library with non-ASCII characters escaped."""
    if HAVE_ORJSON:
        try:
            return exact(orjson.dumps(obj, default=_embed))
        except TypeError:
            pass
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=_value).encode("ascii")


def _embed(obj: Any) -> Any:
    """A :class:`Json` (publication data in a history answer) goes in as it is, unless
    its bytes are not UTF-8 (a lone surrogate): then as its value, which sends the
    whole document down the escaped path. Binary data goes in as its text
    (:func:`~sockway.jsonutil.binary_text`)."""
    if isinstance(obj, Json):
        return orjson.Fragment(obj.raw) if obj.utf8() else obj.value
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return binary_text(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _value(obj: Any) -> Any:
    if isinstance(obj, Json):
        return obj.value
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return binary_text(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class EventQueue:
    """A bounded FIFO of encoded events for one output, awaited by its sender task."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.items: collections.deque[tuple[dict, bytes]] = collections.deque()
        self.dropped = 0
        """Events not queued because the queue was full."""
        self.sent = 0
        self.failed = 0
        """Events the output gave up on after taking them (a webhook batch past its
        retries, or refused with a 4xx)."""
        self._waiter: asyncio.Future | None = None

    def put(self, event: dict, data: bytes) -> None:
        if len(self.items) >= self.limit and event["type"] not in ALWAYS_KEPT:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("%s: event queue full (%d); %d message event(s) dropped",
                            self.name, self.limit, self.dropped)
            return
        self.items.append((event, data))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take(self, limit: int) -> list[tuple[dict, bytes]]:
        out = []
        while self.items and len(out) < limit:
            out.append(self.items.popleft())
        return out

    def requeue_front(self, batch: list[tuple[dict, bytes]]) -> None:
        self.items.extendleft(reversed(batch))

    def __len__(self) -> int:
        return len(self.items)


class EventBus:
    def __init__(self, node_id: str, queue_size: int = 100_000) -> None:
        self.node_id = node_id
        self.queue_size = queue_size
        self.queues: list[EventQueue] = []
        self.listeners: list[Callable[[dict, bytes], None]] = []
        self._ids = itertools.count(1)
        self.emitted = 0

    def add_queue(self, name: str) -> EventQueue:
        queue = EventQueue(name, self.queue_size)
        self.queues.append(queue)
        return queue

    @property
    def active(self) -> bool:
        """Whether anything consumes events (no output: nothing is built)."""
        return bool(self.queues or self.listeners)

    def emit(self, conn: Connection, kind: str, **fields: Any) -> dict | None:
        if not self.active:
            return None
        conn.event_seq += 1
        event = {
            "type": kind,
            "id": f"{self.node_id}-{next(self._ids)}",
            "conn": conn.id,
            "seq": conn.event_seq,
            "endpoint": conn.endpoint.prefix,
            "time": round(time.time(), 6),
        }
        event.update(fields)
        self.publish(event)
        return event

    def emit_raw(self, kind: str, **fields: Any) -> dict | None:
        """An event not tied to a connection's sequence."""
        if not self.active:
            return None
        event = {"type": kind, "id": f"{self.node_id}-{next(self._ids)}",
                 "time": round(time.time(), 6)}
        event.update(fields)
        self.publish(event)
        return event

    def publish(self, event: dict) -> None:
        data = encode_json(event)
        self.emitted += 1
        for queue in self.queues:
            queue.put(event, data)
        for listener in self.listeners:
            try:
                listener(event, data)
            except Exception:
                log.exception("event listener failed")

    def stats(self) -> dict:
        return {
            "emitted": self.emitted,
            "outputs": {q.name: {"queued": len(q), "sent": q.sent, "dropped": q.dropped, "failed": q.failed}
                        for q in self.queues},
        }
