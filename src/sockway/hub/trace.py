"""The frame tracer: what ngrep was to the talk, but transport-aware.

Connections report what they read and write here; ``sockway trace`` and the dashboard
watch it through the gateway's admin socket (``/admin/api/trace``). Every record is
decoded for its transport: WebSocket frames (RFC 6455 section 5.2) with their opcode,
fin bit, close code and size, compressed ones (RFC 7692) inflated; SockJS frames
(``o``, ``h``, ``a[...]``, ``c[...]``, and the message arrays clients send) with the
transport that carried them, over HTTP or inside WebSocket text frames; channel
publications. Watches filter by endpoint, connection id, user, channel and a regular
expression on the payload.

Free when nobody watches: the hot paths test one attribute (``TRACER.active``) per
read and per write. Each watch has a bounded queue (``QUEUE`` records of at most
``MAX_TEXT`` characters of payload each: about 25 MiB of ASCII payloads for a watcher
that never reads); a watcher that falls behind loses records (counted in ``dropped``),
the gateway never waits for it. Records leave in batches of at most ``BATCH`` records.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import json
import re
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sockway.brokers.base import Publication
    from sockway.hub.connection import Connection

__all__ = ["TRACER", "TraceFilter", "Tracer", "Watch"]

QUEUE = 10_000
"""Records waiting per watcher; beyond, records are dropped (and counted)."""
MAX_TEXT = 2000
"""Characters of payload kept per record (binary payloads: the first 64 bytes, in hex)."""
BATCH = 500
"""Records per batch sent to a watcher (keeps each WebSocket message far below the
4 MiB that common clients accept by default)."""
_OPCODES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}


def _text(payload: bytes | str) -> tuple[str, int]:
    if isinstance(payload, str):
        size = len(payload.encode("utf-8", "surrogatepass"))
        text = payload
    else:
        size = len(payload)
        text = payload.decode("utf-8", "replace") if _printable(payload) else "0x" + payload[:64].hex()
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"… (+{len(text) - MAX_TEXT} characters)"
    return text, size


def _printable(data: bytes) -> bool:
    """Whether the payload looks like UTF-8 text: its first 256 bytes decode (a character
    cut by that limit does not count against it)."""
    try:
        codecs.utf_8_decode(data[:256], "strict", len(data) <= 256)
    except UnicodeDecodeError:
        return False
    return True


_SOCKJS_FRAMES = {"o": "open", "h": "heartbeat", "a": "messages", "c": "close"}


def _sockjs_fields(direction: str, text: str) -> dict:
    """What a SockJS frame is: ``{"sockjs": "open" | "heartbeat" | "messages" | "close"}``
    for what the server sends (with the number of messages, or the close code and
    reason), ``{"sockjs": "send", "messages": n}`` for a client's array of messages."""
    if direction == "in":
        fields: dict = {"sockjs": "send"}
        with contextlib.suppress(ValueError):
            messages = json.loads(text)
            fields["messages"] = len(messages) if isinstance(messages, list) else 1
        return fields
    kind = _SOCKJS_FRAMES.get(text[:1])
    if kind is None:
        return {}
    fields = {"sockjs": kind}
    if kind == "messages" or kind == "close":
        with contextlib.suppress(ValueError):
            body = json.loads(text[1:])
            if kind == "messages" and isinstance(body, list):
                fields["messages"] = len(body)
            elif kind == "close" and isinstance(body, list) and len(body) == 2:
                fields["code"], fields["reason"] = body
    return fields


class TraceFilter:
    def __init__(self, endpoint: str | None = None, conn: str | None = None, user: str | None = None,
                 channel: str | None = None, match: str | None = None) -> None:
        self.endpoint = endpoint or None
        self.conn = conn or None
        self.user = user or None
        self.channel = channel or None
        try:
            self.pattern = re.compile(match) if match else None
        except re.error as exc:
            raise ValueError(f"invalid regular expression {match!r}: {exc}") from None

    def matches(self, conn: Connection | None, text: str, channel: str | None = None) -> bool:
        if conn is not None:
            if self.endpoint and conn.endpoint.prefix != self.endpoint:
                return False
            if self.conn and conn.id != self.conn:
                return False
            if self.user and conn.user != self.user:
                return False
            if self.channel and channel != self.channel and not (
                    conn.channels and self.channel in conn.channels):
                return False
        else:
            if self.endpoint or self.conn or self.user:
                return False
            if self.channel and channel != self.channel:
                return False
        return self.pattern is None or self.pattern.search(text) is not None

    def describe(self) -> dict:
        return {k: v for k, v in (("endpoint", self.endpoint), ("conn", self.conn), ("user", self.user),
                                  ("channel", self.channel),
                                  ("match", self.pattern.pattern if self.pattern else None)) if v}


class Watch:
    def __init__(self, trace_filter: TraceFilter, limit: int = QUEUE) -> None:
        self.filter = trace_filter
        self.items: collections.deque[dict] = collections.deque()
        self.limit = limit
        self.dropped = 0
        self._waiter: asyncio.Future | None = None

    def put(self, record: dict) -> None:
        if len(self.items) >= self.limit:
            self.dropped += 1
            return
        self.items.append(record)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get_batch(self, timeout: float | None = None, limit: int = BATCH) -> list[dict]:
        """The next records (at most ``limit``), waiting up to ``timeout`` seconds for
        one; an empty list when none came."""
        if not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        items = self.items
        if len(items) <= limit:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(limit)]
        return batch


def _is_sockjs(conn: Connection) -> bool:
    """Whether the connection's WebSocket text frames carry SockJS frames."""
    return conn.transport_name.startswith("sockjs")


class Tracer:
    def __init__(self) -> None:
        self.watches: list[Watch] = []
        self.active = False

    def add(self, watch: Watch) -> None:
        self.watches.append(watch)
        self.active = True

    def remove(self, watch: Watch) -> None:
        if watch in self.watches:
            self.watches.remove(watch)
        self.active = bool(self.watches)

    # -- recording ----------------------------------------------------------------------------

    def record(self, conn: Connection | None, direction: str, kind: str, payload: bytes | str,
               channel: str | None = None, sockjs: bool = False, **extra: Any) -> None:
        """Give the record to every watch whose filter it passes. ``sockjs``: the payload
        is a SockJS frame (decoded only if somebody receives the record)."""
        text, size = _text(payload)
        watches = [watch for watch in self.watches if watch.filter.matches(conn, text, channel)]
        if not watches:
            return
        record = {"t": round(time.time(), 6), "dir": direction, "kind": kind, "size": size, "data": text}
        if conn is not None:
            record.update(conn=conn.id, endpoint=conn.endpoint.prefix, transport=conn.transport_name)
            if conn.user is not None:
                record["user"] = conn.user
        if channel is not None:
            record["channel"] = channel
        record.update(extra)
        if sockjs:
            record.update(_sockjs_fields(direction, text))
        for watch in watches:
            watch.put(record)

    def ws_frame_in(self, conn: Connection, frame) -> None:
        """A frame the client sent, as the websockets protocol parsed it."""
        kind = _OPCODES.get(int(frame.opcode), str(frame.opcode))
        payload = bytes(frame.data)
        extra: dict = {"fin": frame.fin}
        if kind == "close" and len(payload) >= 2:
            extra["code"] = struct.unpack("!H", payload[:2])[0]
            payload = payload[2:]
        self.record(conn, "in", "ws-" + kind, payload, sockjs=kind == "text" and _is_sockjs(conn), **extra)

    def ws_bytes_out(self, conn: Connection, data: bytes, wbits: int = 15) -> None:
        """Bytes written to a WebSocket: each server frame decoded (and inflated)."""
        offset = 0
        while offset + 2 <= len(data):
            first, second = data[offset], data[offset + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                length, head = struct.unpack_from("!H", data, offset + 2)[0], 4
            elif length == 127:
                length, head = struct.unpack_from("!Q", data, offset + 2)[0], 10
            payload = data[offset + head: offset + head + length]
            offset += head + length
            opcode, compressed = first & 0x0F, bool(first & 0x40)
            if compressed:
                with contextlib.suppress(zlib.error):
                    payload = zlib.decompressobj(-wbits).decompress(payload + b"\x00\x00\xff\xff")
            kind = _OPCODES.get(opcode, str(opcode))
            extra: dict = {"wire": head + length}
            if compressed:
                extra["compressed"] = True
            if kind == "close" and len(payload) >= 2:
                extra["code"] = struct.unpack("!H", payload[:2])[0]
                payload = payload[2:]
            self.record(conn, "out", "ws-" + kind, payload, sockjs=kind == "text" and _is_sockjs(conn), **extra)

    def sockjs(self, conn: Connection, direction: str, frame: bytes | str) -> None:
        """A SockJS frame (``o``, ``h``, ``a[...]``, ``c[...]``) sent over HTTP or,
        inbound, the array of messages a client posted."""
        self.record(conn, direction, "sockjs", frame, sockjs=True)

    def publication(self, pub: Publication) -> None:
        data = pub.data if isinstance(pub.data, bytes) else pub.data.text
        self.record(None, "publish", "publication", data, channel=pub.channel, offset=pub.offset)


TRACER = Tracer()
