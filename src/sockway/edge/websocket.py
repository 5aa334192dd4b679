"""WebSocket connections after the opening handshake (RFC 6455).

Once aiohttp has parsed the upgrade request and the handshake has been accepted
(:mod:`sockway.edge.upgrade`), the TCP transport is handed to one of the protocols
below. Reading uses the ``websockets`` Sans-I/O ``ServerProtocol``: frame parsing,
unmasking, permessage-deflate decoding with the message size cap (RFC 7692 section 8.1
decompression bombs end in close 1009), ping/pong and the closing handshake (section
7). What it does not do, and this module does:

* reassembling fragmented messages in one buffer each and validating UTF-8 (section
  8.1, close 1007) incrementally: a fragmented text message fails as soon as its bytes
  cannot be UTF-8 (:class:`~sockway.ws.incoming.MessageAssembler`);
* following frame boundaries in what goes to the protocol
  (:class:`~sockway.ws.incoming.FrameScanner`): the fast path below resumes at a frame
  start, a pong is written before a message completed after its ping, a close between
  fragments gets a normal closing handshake, and a message in more than 64 frames
  whose frames carry less than 64 bytes each on average is closed with 1009;
* writing data frames: they arrive here already encoded once for all recipients
  (:class:`~sockway.hub.message.OutMessage`) and are written in one coalesced write per
  event loop iteration (:mod:`sockway.hub.coalesce`);
* bounding what waits for a client that does not read (close 4008, then abort): data,
  and the pongs the protocol answers pings with;
* keepalive pings (section 5.5.2), driven by the endpoint's periodic sweep; a client
  that does not answer in time is failed with 1011.

Memory per connection for a client that stops reading: at most ``max_buffer`` plus
one message (the check is made before a message is queued, so a single message larger
than ``max_buffer`` still reaches a client that keeps up), plus the kernel's socket
buffer.

A connection is a plain ``asyncio.Protocol`` with ``__slots__``: no task, no future and
no buffered request per connection, which is what keeps an idle connection at a few KiB.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, ClassVar

from websockets.exceptions import ProtocolError
from websockets.frames import Close, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

try:  # the C routine the websockets library ships; its pure-Python fallback otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from sockway import closecodes
from sockway.hub.connection import Connection, ConnectionInfo
from sockway.hub.message import ENCODINGS, SOCKJS, ws_key
from sockway.hub.trace import TRACER
from sockway.sockjs.frames import HEARTBEAT, OPEN, close_frame, messages_frame
from sockway.sockjs.payload import PayloadError, decode_messages
from sockway.ws.frames import OP_CLOSE, OP_TEXT, deflate_payload, frame, frame_header
from sockway.ws.incoming import CLOSE, FEED, FrameScanner, MessageAssembler

if TYPE_CHECKING:
    from sockway.edge.admission import Ticket
    from sockway.hub.coalesce import Coalescer
    from sockway.hub.endpoint import Endpoint

__all__ = ["RawWebSocket", "SockJSWebSocket", "WebSocketConnection"]

log = logging.getLogger("sockway.ws")

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG
_CLOSE = Opcode.CLOSE
_OPEN = State.OPEN
_CLOSED = State.CLOSED
_MAX_REASON = 123  # a close frame's payload is at most 125 bytes (section 5.5)


def close_args(code: int, reason: str) -> tuple[int, str]:
    """A code and reason that may go in a close frame (sections 5.5 and 7.4): codes a
    server may not send become 1000 (see :func:`~sockway.closecodes.websocket_code`),
    and the reason is cut to 123 bytes of UTF-8 on a character boundary."""
    code = closecodes.websocket_code(code)
    data = reason.encode("utf-8", "replace")
    if len(data) > _MAX_REASON:
        reason = data[:_MAX_REASON].decode("utf-8", "ignore")
    return code, reason


class WebSocketConnection(Connection, asyncio.Protocol):
    """Common reading, writing and closing of a WebSocket connection."""

    __slots__ = (
        "_abort_handle",
        "_assembler",
        "_backlog",
        "_closing",
        "_coalescer",
        "_fast",
        "_lost",
        "_max_buffer",
        "_pending",
        "_pending_bytes",
        "_ping_sent",
        "_scanner",
        "_transport",
        "_ws",
        "close_code",
        "close_reason",
        "encoding_key",
        "last_recv",
        "ticket",
        "wbits",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        ws: ServerProtocol,
        transport: asyncio.Transport,
        coalescer: Coalescer,
        remote: str,
        info: ConnectionInfo | None,
        wbits: int,
        max_buffer: int,
    ) -> None:
        Connection.__init__(self, endpoint, remote, info)
        self._ws = ws
        self._transport = transport
        self._coalescer = coalescer
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._max_buffer = max_buffer
        self._backlog = 0  # the transport's write buffer size after the last write
        self._assembler = MessageAssembler()
        self._scanner = FrameScanner()
        self._closing = False
        self._lost = False
        self._fast = not ws.extensions
        self._abort_handle: asyncio.TimerHandle | None = None
        self._ping_sent: float | None = None
        self.last_recv = 0.0
        self.wbits = wbits
        self.encoding_key = self._encoding_key()
        self.close_code: int | None = None
        self.close_reason = ""
        self.ticket: Ticket | None = None
        """The connection's place under the server's TCP limits, released when it is gone."""

    def _encoding_key(self) -> int:
        return ws_key(self.wbits, self.endpoint.config.compress_threshold)

    # -- asyncio.Protocol -----------------------------------------------------------

    def start(self, tail: bytes = b"") -> None:
        """Take over the transport (after the 101 response has been written)."""
        self._transport.set_protocol(self)
        self.last_recv = self.endpoint.hub.loop.time()
        self.endpoint.opened(self)
        if tail:
            self.data_received(tail)

    def data_received(self, data: bytes) -> None:
        scanner = self._scanner
        if scanner.stopped:
            return  # a close between fragments was answered, or too many fragments
        if (self._fast and scanner.at_frame_start and self._ws.state is _OPEN
                and not self._closing):
            consumed = self._simple_frames(data)
            if consumed == len(data):
                return
            data = data[consumed:]
        endpoint = self.endpoint
        endpoint.bytes_in += len(data)
        self.last_recv = endpoint.hub.loop.time()
        for action, value in scanner.scan(data):
            if action == FEED:
                self._receive(value)
            elif action == CLOSE:
                self._close_between_fragments(value)
            else:
                self._fail(closecodes.MESSAGE_TOO_BIG, "message in too many small fragments")
            if self._lost:
                break

    def _receive(self, data: bytes) -> None:
        """Give bytes to the ``websockets`` protocol, then handle the frames it parsed
        and write what it answered (pongs, close)."""
        ws = self._ws
        ws.receive_data(data)
        assembler = self._assembler
        tracing = TRACER.active
        for event in ws.events_received():
            if tracing:
                TRACER.ws_frame_in(self, event)
            opcode = event.opcode
            if self._closing and opcode is not _CLOSE and opcode is not _PONG:
                continue  # closing (the application, or a failure): data is dropped
            if opcode is _TEXT or opcode is _BINARY:
                if event.fin:
                    if opcode is _TEXT:
                        try:
                            text = event.data.decode()
                        except UnicodeDecodeError as exc:
                            self._fail(closecodes.INVALID_DATA, f"invalid UTF-8 at {exc.start}")
                            break
                        self._dispatch(text)
                    else:
                        self._dispatch(bytes(event.data))
                else:
                    # Section 8.1: the text is checked as the fragments come, so that
                    # invalid UTF-8 fails the connection at once, not at the last one.
                    try:
                        assembler.start(event.data, opcode is _TEXT)
                    except UnicodeDecodeError:
                        self._fail(closecodes.INVALID_DATA, "invalid UTF-8")
                        break
            elif opcode is _CONT:
                if not assembler.active:  # the protocol already failed the connection
                    continue
                try:
                    message = assembler.add(event.data, event.fin)
                except UnicodeDecodeError:
                    self._fail(closecodes.INVALID_DATA, "invalid UTF-8")
                    break
                if message is not None:
                    self._dispatch(message)
            elif opcode is _PONG:
                self._ping_sent = None
        # A close from the client: what was queued before it is written, then the
        # protocol's echo, and the end of the stream marks the connection closing.
        self._write_protocol_output()

    def _close_between_fragments(self, payload: bytes) -> None:
        """A close frame between the fragments of a message (RFC 6455 section 5.4: a
        control frame may come there): the message is dropped and the closing handshake
        completes as usual, echoing the code (section 5.5.1); then the server closes
        the TCP connection (section 7.1.1). An invalid code is a protocol error (1002),
        a reason that is not UTF-8 invalid data (1007), as anywhere else."""
        self._assembler.reset()
        try:
            received = Close.parse(payload)
        except ProtocolError as exc:
            self._fail(closecodes.PROTOCOL_ERROR, str(exc))
            return
        except UnicodeDecodeError as exc:
            self._fail(closecodes.INVALID_DATA, f"invalid UTF-8 at {exc.start}")
            return
        if TRACER.active:
            TRACER.record(self, "in", "ws-close", received.reason, code=received.code, fin=True)
        if self._pending and not self._closing:
            self._flush_pending_now()  # answers to what came before the close go first
        self._closing = True
        if self.close_code is None:
            self.close_code, self.close_reason = received.code, received.reason
        ws = self._ws
        if ws.state is _OPEN:
            if payload:
                ws.send_close(received.code, received.reason)
            else:
                ws.send_close()
        self._write_protocol_output()
        self._transport.close()

    def _simple_frames(self, data: bytes) -> int:
        """The fast path for the common frame: final, masked, not compressed, text or
        binary, within max_message_size (RFC 6455 section 5.2). Such frames at the
        start of ``data`` are unmasked (the library's C routine) and dispatched here;
        the offset of the first other frame, or incomplete one, is returned and the
        rest goes through the ``websockets`` protocol as usual, which handles control
        frames, fragments, extensions, limits and every error. Taken only when the
        protocol holds no partial frame, so both never split one frame between them.
        Saves about 2 us per message (the library's generator-based parser)."""
        size = len(data)
        limit = self._ws.max_message_size
        offset = 0
        endpoint = self.endpoint
        while offset + 6 <= size:
            first = data[offset]
            second = data[offset + 1]
            if first not in (0x81, 0x82) or not second & 0x80:
                break  # not final text/binary without RSV bits, or not masked: the protocol decides
            length = second & 0x7F
            head = offset + 2
            if length == 126:
                if head + 2 > size:
                    break
                length = int.from_bytes(data[head:head + 2], "big")
                head += 2
            elif length == 127:
                break  # 64-bit lengths: leave them (and their limit checks) to the protocol
            if limit is not None and length > limit:
                break
            end = head + 4 + length
            if end > size:
                break
            payload = apply_mask(data[head + 4:end], data[head:head + 4])
            offset = end
            if TRACER.active:
                TRACER.record(self, "in", "ws-text" if first == 0x81 else "ws-binary", payload, fin=True)
            if first == 0x81:
                try:
                    text = payload.decode()
                except UnicodeDecodeError as exc:
                    self._fail(closecodes.INVALID_DATA, f"invalid UTF-8 at {exc.start}")
                    break
                self._dispatch(text)
            else:
                self._dispatch(payload)
            if self._closing:
                break  # the rest goes to the protocol, which reads the client's close
        if offset:
            endpoint.bytes_in += offset
            self.last_recv = endpoint.hub.loop.time()
        return offset

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._write_protocol_output()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            ticket.release()
        self._closing = True
        self._pending = []
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        ws = self._ws
        if self.close_code is None:
            if ws.close_rcvd is not None:
                self.close_code, self.close_reason = ws.close_rcvd.code, ws.close_rcvd.reason
            elif ws.close_sent is not None:
                self.close_code, self.close_reason = ws.close_sent.code, ws.close_sent.reason
            else:
                self.close_code, self.close_reason = closecodes.ABNORMAL, "connection lost"
        self.endpoint.closed(self, self.close_code, self.close_reason)

    def pause_writing(self) -> None:  # the kernel buffer is full; the bound below applies
        pass

    def resume_writing(self) -> None:
        pass

    # -- reading ----------------------------------------------------------------------

    def _dispatch(self, data: str | bytes) -> None:
        raise NotImplementedError

    # -- writing ----------------------------------------------------------------------

    def _queue(self, data: bytes, size: int) -> None:
        """Queue bytes for the next coalesced write. A client for which more than
        ``max_buffer`` bytes already wait when a new message comes (queued here or
        unsent in the transport) is a slow consumer."""
        if self._pending_bytes + self._backlog > self._max_buffer:
            # What the transport held after the last write may have drained since.
            self._backlog = self._transport.get_write_buffer_size()
            if self._pending_bytes + self._backlog > self._max_buffer:
                self._slow_consumer()
                return
        pending = self._pending
        if not pending:
            self._coalescer.mark(self)
        pending.append(data)
        self._pending_bytes += size

    def flush(self, cache: dict) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_bytes = 0
        if self._closing:
            return
        transport = self._transport
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        transport.write(data)
        self._coalescer.writes += 1
        self._backlog = transport.get_write_buffer_size()
        self.endpoint.bytes_out += len(data)
        if TRACER.active:
            TRACER.ws_bytes_out(self, data, self.wbits)

    def _write_protocol_output(self) -> None:
        """Write what the protocol produced (pong, close) after our queued data.

        Pongs are bounded like data: a client that sends pings without reading the
        answers is a slow consumer once more than ``max_buffer`` bytes wait for it."""
        transport = self._transport
        if not self._closing and transport.get_write_buffer_size() > self._max_buffer:
            self._slow_consumer()  # writes the protocol's output with the close frame
        for data in self._ws.data_to_send():
            if data:
                if self._pending:
                    self._flush_pending_now()
                transport.write(data)
                if TRACER.active:
                    TRACER.ws_bytes_out(self, data, self.wbits)
            else:  # SEND_EOF: the closing handshake is complete (server side)
                self._closing = True
                transport.close()
        if self._ws.state is _CLOSED and not transport.is_closing():
            transport.close()

    def _flush_pending_now(self) -> None:
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        if not self._closing:
            data = b"".join(pending)
            self._transport.write(data)
            self._coalescer.writes += 1
            self._backlog = self._transport.get_write_buffer_size()
            self.endpoint.bytes_out += len(data)
            if TRACER.active:
                TRACER.ws_bytes_out(self, data, self.wbits)

    # -- closing ------------------------------------------------------------------------

    def close(self, code: int = closecodes.NORMAL, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 section 7.1.2): queued data goes first,
        then the close frame; the transport is aborted if the client does not finish the
        handshake within the endpoint's close timeout."""
        if self._closing or self._lost:
            return
        if self._pending:
            self._flush_pending_now()
        ws = self._ws
        superseded = ws.state is not _OPEN  # see _supersede
        self._closing = True
        self.close_code, self.close_reason = code, reason
        if superseded:
            self._supersede(code, reason)
        else:
            ws.send_close(*close_args(code, reason))
            self._write_protocol_output()
        self._schedule_abort(self.endpoint.config.close_timeout)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7) for what the client sent:
        answers to what came before are written first, then the close frame."""
        if self._pending and not self._closing:
            self._flush_pending_now()
        self.close_code, self.close_reason = code, reason
        ws = self._ws
        if ws.state is not _OPEN and not self._closing:
            self._closing = True
            self._supersede(code, reason)
        else:
            ws.fail(code, reason)
            self._closing = True
            self._write_protocol_output()
        self._schedule_abort(self.endpoint.config.close_timeout)

    def _supersede(self, code: int, reason: str) -> None:
        """Close with ``code`` although the protocol has already failed the connection.

        That happens only while the events of one read are handled (otherwise its
        close frame is written, and the connection is closing): the protocol parsed a
        later frame of the read, found it malformed and queued its close frame, and the
        frame being handled now turns out to end the connection first (invalid UTF-8,
        or the application closes). The first frame in the stream decides, as if the
        frames had come one per read: the protocol's close is dropped, this one sent,
        and the TCP connection closed (RFC 6455 section 7.1.7)."""
        self._ws.data_to_send()  # the protocol's close frame and end of stream: not sent
        code, reason = close_args(code, reason)
        data = frame(OP_CLOSE, Close(code, reason).serialize())
        self._transport.write(data)
        if TRACER.active:
            TRACER.ws_bytes_out(self, data, self.wbits)
        self._transport.close()

    def _slow_consumer(self) -> None:
        """The client does not read: drop what is queued, send the close frame behind
        what the transport already holds, and abort shortly after. Memory stays bounded
        by ``max_buffer`` plus one message, plus the kernel's socket buffer."""
        if self._closing:
            return
        self._pending = []
        self._pending_bytes = 0
        self.endpoint.hub.stats.slow_consumers += 1
        log.info("%r: outgoing buffer over %d bytes, closing", self, self._max_buffer)
        self.close(closecodes.SLOW_CONSUMER, "slow consumer: outgoing buffer full")
        self._schedule_abort(1.0)

    def _schedule_abort(self, delay: float) -> None:
        if self._lost:
            return
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        self._abort_handle = self.endpoint.hub.loop.call_later(delay, self._abort)

    def _abort(self) -> None:
        self._abort_handle = None
        if not self._lost:
            self._transport.abort()

    # -- keepalive ----------------------------------------------------------------------

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """Called by the endpoint's sweep: ping a connection silent for ``interval``
        seconds; fail it with 1011 if the pong does not come within ``timeout``."""
        if self._closing:
            return
        if self._ping_sent is not None:
            if now - self._ping_sent > timeout:
                # Like websockets' own keepalive: fail with 1011 (a client that is
                # alive but stuck learns why); the abort follows if it never reads.
                self._fail(closecodes.INTERNAL_ERROR, "keepalive ping timeout")
            return
        if now - self.last_recv >= interval:
            self._ping_sent = now
            self._ws.send_ping(os.urandom(4))
            self._write_protocol_output()

    @property
    def is_open(self) -> bool:
        return not self._closing and not self._lost


class RawWebSocket(WebSocketConnection):
    """A plain WebSocket client (``/prefix/websocket``): messages are the WebSocket
    messages themselves, text or binary."""

    __slots__ = ()
    transport_name: ClassVar[str] = "websocket"

    def push(self, encoded: bytes) -> None:
        if not self._closing:
            self._queue(encoded, len(encoded))

    def _dispatch(self, data: str | bytes) -> None:
        self.endpoint.received(self, data)


class SockJSWebSocket(WebSocketConnection):
    """The SockJS ``websocket`` transport (``/prefix/<server>/<session>/websocket``):
    SockJS frames carried in WebSocket text messages. Messages queued during one loop
    iteration leave as one ``a[...]`` frame; recipients with the same queue share the
    frame (and its compression) through the flush cache."""

    __slots__ = ("_last_sent", "_threshold")
    transport_name: ClassVar[str] = "sockjs-websocket"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_sent = 0.0
        self._threshold = self.endpoint.config.compress_threshold

    def _encoding_key(self) -> int:
        return SOCKJS

    def start(self, tail: bytes = b"") -> None:
        self._transport.set_protocol(self)
        self._write_frame(OPEN)
        self._last_sent = self.last_recv = self.endpoint.hub.loop.time()
        self.endpoint.opened(self)
        if tail:
            self.data_received(tail)

    def push(self, encoded: bytes) -> None:
        if not self._closing:
            self._queue(encoded, len(encoded) + 1)

    def flush(self, cache: dict) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_bytes = 0
        if self._closing:
            return
        key = (self.wbits, self._threshold, pending[0] if len(pending) == 1 else tuple(pending))
        data = cache.get(key)
        if data is None:
            ENCODINGS["sockjs-batch"] += 1
            data = cache[key] = self._frame(messages_frame(pending))
        transport = self._transport
        transport.write(data)
        self._coalescer.writes += 1
        self._backlog = transport.get_write_buffer_size()
        self.endpoint.bytes_out += len(data)
        if TRACER.active:
            TRACER.ws_bytes_out(self, data, self.wbits)

    def _write_frame(self, sockjs_frame: bytes) -> None:
        """Write a SockJS control frame (``o``, ``h``, ``c[...]``) at once."""
        data = frame(OP_TEXT, sockjs_frame)
        self._transport.write(data)
        self.endpoint.bytes_out += len(data)
        if TRACER.active:
            TRACER.ws_bytes_out(self, data, self.wbits)

    def _frame(self, sockjs_frame: bytes) -> bytes:
        """One WebSocket text frame for a SockJS frame, compressed (RFC 7692 section
        7.2.1) when permessage-deflate was negotiated and the frame is at least the
        endpoint's compress_threshold long."""
        wbits = self.wbits
        if wbits and len(sockjs_frame) >= self._threshold:
            compressed = deflate_payload(sockjs_frame, wbits)
            return frame_header(OP_TEXT, len(compressed), compressed=True) + compressed
        return frame(OP_TEXT, sockjs_frame)

    def _flush_pending_now(self) -> None:
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        if not self._closing:
            ENCODINGS["sockjs-batch"] += 1
            data = self._frame(messages_frame(pending))
            self._transport.write(data)
            self._coalescer.writes += 1
            self._backlog = self._transport.get_write_buffer_size()
            self.endpoint.bytes_out += len(data)
            if TRACER.active:
                TRACER.ws_bytes_out(self, data, self.wbits)

    def _dispatch(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        if not data:
            return  # empty messages are ignored (Websocket.test_empty_frame)
        try:
            messages = decode_messages(data, allow_string=True)
        except PayloadError:
            # Broken JSON: "the server must abruptly terminate the ws connection"
            # (Websocket.test_broken_json).
            self.close_code, self.close_reason = closecodes.ABNORMAL, "broken JSON"
            self._closing = True
            self._transport.abort()
            return
        received = self.endpoint.received
        for message in messages:
            received(self, message)

    def close(self, code: int = closecodes.GO_AWAY, reason: str = "Go away!") -> None:
        """Send ``c[code,"reason"]``, then close the WebSocket."""
        if self._closing or self._lost:
            return
        if self._pending:
            self._flush_pending_now()
        self._write_frame(close_frame(code, reason))
        super().close(closecodes.websocket_code(code), reason)
        self.close_code, self.close_reason = code, reason

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """SockJS heartbeats (``h``) rather than WebSocket pings: sockjs-client expects
        them and they also keep intermediaries that ignore control frames awake."""
        if self._closing:
            return
        if now - self._last_sent >= interval:
            self._last_sent = now
            self._write_frame(HEARTBEAT)
