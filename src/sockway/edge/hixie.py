"""SockJS over a legacy hixie-76 WebSocket (see :mod:`sockway.ws.hixie76`).

Held to the endpoint's limits like an RFC 6455 connection: an incoming frame (finished
or not) longer than ``max_message_size`` closes the session with
``c[1009,"Message too big"]``, since hixie-76 frames have no length and a client could
otherwise grow the receive buffer without end; a client for which more than
``max_buffer`` bytes wait when a new message comes is a slow consumer (``c[4008,...]``,
aborted a second later). Memory per connection: at most ``max_message_size`` in and
``max_buffer`` plus one message out, plus the kernel's socket buffers.

The handshake is checked whole (keys included) before it is answered
(``EndpointRoutes.start_hixie76``); the 8 key bytes that follow the answer must arrive
within the connection's ``head_timeout``, counted from its accept like the head's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, ClassVar

from sockway import closecodes
from sockway.hub.connection import Connection
from sockway.hub.message import SOCKJS
from sockway.hub.trace import TRACER
from sockway.sockjs.frames import OPEN, close_frame, messages_frame
from sockway.sockjs.payload import PayloadError, decode_messages
from sockway.ws import hixie76

if TYPE_CHECKING:
    from sockway.edge.admission import Ticket
    from sockway.hub.endpoint import Endpoint

__all__ = ["Hixie76SockJS", "handshake_head"]

log = logging.getLogger("sockway.edge")


def handshake_head(origin: str, location: str, protocol: str | None) -> bytes:
    lines = [
        "HTTP/1.1 101 WebSocket Protocol Handshake",
        "Upgrade: WebSocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Origin: {origin}",
        f"Sec-WebSocket-Location: {location}",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Hixie76SockJS(Connection, asyncio.Protocol):
    __slots__ = ("_buffer", "_closed", "_keys", "_lost", "_open", "_pending", "_pending_bytes", "_scanned",
                 "_ticket", "_transport")
    transport_name: ClassVar[str] = "sockjs-websocket-hixie76"
    encoding_key = SOCKJS

    def __init__(self, endpoint: Endpoint, transport: asyncio.Transport, remote: str,
                 keys: tuple[int, int], ticket: Ticket | None = None) -> None:
        super().__init__(endpoint, remote, None)
        self._transport = transport
        self._buffer = bytearray()
        self._scanned = 0
        self._keys = keys
        """The key numbers of Sec-WebSocket-Key1 and -Key2 (hixie76.key_number)."""
        self._ticket = ticket
        """The connection's place under the server's TCP limits, released when it is gone."""
        self._open = False
        self._closed = False
        self._lost = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def start(self, tail: bytes) -> None:
        """Take over the transport, after the handshake's head has been answered; the
        head_timeout that started at accept now waits for the key bytes."""
        self._transport.set_protocol(self)
        ticket = self._ticket
        door = ticket.door if ticket is not None else None
        if door is not None:
            door.head.enter(ticket, self, door.loop.time())
        if tail:
            self.data_received(tail)

    def timed_out(self) -> None:
        """The 8 key bytes did not come within head_timeout."""
        if not self._lost:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self.endpoint.bytes_in += len(data)
        self._buffer += data
        if not self._open:
            if len(self._buffer) < 8:
                return
            key3 = bytes(self._buffer[:8])
            del self._buffer[:8]
            ticket = self._ticket
            if ticket is not None and ticket.door is not None:
                ticket.door.head.leave(ticket)
            answer = hixie76.challenge_response(*self._keys, key3)
            if TRACER.active:
                TRACER.record(self, "out", "hixie-text", OPEN, sockjs=True)
            self._transport.write(answer + hixie76.encode_text(OPEN))
            self._open = True
            self.endpoint.opened(self)
        messages, closing, self._scanned = hixie76.decode_frames(self._buffer, self._scanned)
        limit = self.endpoint.config.max_message_size
        for raw in messages:
            if not raw:
                continue
            if len(raw) > limit:
                self._too_big()
                return
            if TRACER.active:
                TRACER.record(self, "in", "hixie-text", raw, sockjs=True)
            try:
                decoded = decode_messages(raw, allow_string=True)
            except PayloadError:
                self._transport.abort()
                return
            for message in decoded:
                self.endpoint.received(self, message)
        if closing:
            self._transport.close()
        elif len(self._buffer) > limit + 1:  # an unfinished frame (0x00 + payload) past the limit
            self._too_big()

    def _too_big(self) -> None:
        self._buffer.clear()
        self._scanned = 0
        log.info("%r: incoming message over %d bytes, closing", self, self.endpoint.config.max_message_size)
        self.close(closecodes.MESSAGE_TOO_BIG, "Message too big")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost = True
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()
        if self._open:
            self.endpoint.closed(self, closecodes.ABNORMAL, "connection lost")

    def push(self, encoded: bytes) -> None:
        if self._closed:
            return
        if self._pending_bytes + self._transport.get_write_buffer_size() > self.endpoint.config.max_buffer:
            self._slow_consumer()
            return
        if not self._pending:
            self.endpoint.hub.coalescer.mark(self)
        self._pending.append(encoded)
        self._pending_bytes += len(encoded)

    def _slow_consumer(self) -> None:
        """Drop what is queued, send the close frame behind what the transport holds,
        abort a second later (the client does not read it)."""
        self._pending = []
        self._pending_bytes = 0
        self.endpoint.hub.stats.slow_consumers += 1
        log.info("%r: outgoing buffer over %d bytes, closing", self, self.endpoint.config.max_buffer)
        self.close(closecodes.SLOW_CONSUMER, "slow consumer: outgoing buffer full")
        asyncio.get_running_loop().call_later(1.0, self._abort)

    def _abort(self) -> None:
        if not self._lost:
            self._transport.abort()

    def flush(self, cache: dict) -> None:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        if pending and not self._closed:
            text = messages_frame(pending)
            frame = hixie76.encode_text(text)
            self.endpoint.bytes_out += len(frame)
            if TRACER.active:
                TRACER.record(self, "out", "hixie-text", text, sockjs=True)
            self._transport.write(frame)
            self.endpoint.hub.coalescer.writes += 1

    def close(self, code: int = closecodes.GO_AWAY, reason: str = "Go away!") -> None:
        if self._closed:
            return
        self.flush({})
        self._closed = True
        text = close_frame(code, reason)
        if TRACER.active:
            TRACER.record(self, "out", "hixie-text", text, sockjs=True)
        self._transport.write(hixie76.encode_text(text) + hixie76.CLOSE)
        self._transport.close()

    @property
    def is_open(self) -> bool:
        return not self._closed
