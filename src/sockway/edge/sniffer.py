"""The first bytes of each connection, before aiohttp sees them.

Every accepted TCP connection starts here: it is counted (and refused at once over a
limit, :mod:`sockway.edge.admission`; a TLS connection was counted by
:mod:`sockway.edge.tls` before its handshake), given ``head_timeout`` seconds from its
accept to send a complete first request head, and its head is collected with a linear
scan and a bound (``MAX_HEAD``; more gets ``431``).

aiohttp refuses any request carrying ``Sec-WebSocket-Key1`` with 400 before routing:
the legacy hixie-76 handshake sends 8 key bytes after its headers without declaring a
body length, which an HTTP parser cannot tell from a pipelined request (a smuggling
risk). The SockJS protocol suite still checks that handshake (``Websocket.test_haproxy``),
so a hixie-76 handshake for a SockJS WebSocket URL is answered here, and any other
request carrying ``Sec-WebSocket-Key1`` refused here with ``400`` and the reason.
Anything else is handed, with the bytes already read, to aiohttp's request handler,
which then owns the connection as if it had accepted it itself (one extra callback for
the first packet, nothing after).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from sockway.edge.admission import Door, Ticket, complaints
from sockway.edge.http_protocol import HttpConnection, one_line
from sockway.sockjs.urls import parse_path

if TYPE_CHECKING:
    from sockway.edge.routes import EndpointRoutes

__all__ = ["MAX_HEAD", "FirstRequestSniffer", "http_error"]

MAX_HEAD = 16384
"""Longest first request head (request line and headers), in bytes; longer gets 431.
Later heads on a keep-alive connection are bounded by aiohttp's parser (8190 bytes a
line, 128 headers)."""
_END = b"\r\n\r\n"
_KEY1 = b"\r\nsec-websocket-key1:"

REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def http_error(status: int, message: str) -> bytes:
    """A whole ``status`` response with ``message`` as its text, closing the connection."""
    body = message.encode("utf-8")
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1") + body


class FirstRequestSniffer(asyncio.Protocol):
    __slots__ = ("_buffer", "_door", "_factory", "_reading", "_routes", "_secure", "_sndbuf", "_ticket",
                 "_transport")

    def __init__(self, factory: Callable[[], HttpConnection], routes: dict[str, EndpointRoutes],
                 door: Door, secure: bool = False, sndbuf: int = 0, ticket: Ticket | None = None) -> None:
        self._factory = factory
        self._routes = routes
        self._door = door
        self._secure = secure
        self._sndbuf = sndbuf
        self._transport: asyncio.Transport | None = None
        self._ticket = ticket
        """Given when the connection was admitted before its TLS handshake."""
        self._buffer: bytearray | None = None
        """The head so far, when it did not come in one packet."""
        self._reading = False
        """Collecting the first head (until it is handed over, answered or timed out)."""

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        door = self._door
        ticket = self._ticket
        if ticket is None:
            ticket = self._ticket = door.admit(transport)
            if ticket is None:
                transport.abort()
                return
        self._transport = transport  # type: ignore[assignment]
        self._reading = True
        door.head.enter(ticket, self, door.loop.time())  # (a TLS connection's clock runs since its accept)
        if self._sndbuf:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)

    def data_received(self, data: bytes) -> None:
        if not self._reading:
            return  # refused, answered or timed out: nothing more is read here
        buffer = self._buffer
        if buffer is None:
            end = data.find(_END)
            if end >= 0:
                self._head_complete(data, end)
                return
            buffer = self._buffer = bytearray()
            start = 0
        else:
            # Only the last 3 bytes already scanned may begin the end of the head: the
            # scan is linear however the head is split.
            start = max(0, len(buffer) - 3)
        buffer += data
        end = buffer.find(_END, start)
        if end >= 0:
            self._buffer = None
            self._head_complete(bytes(buffer), end)
        elif len(buffer) > MAX_HEAD:
            self._refuse(431, f"The request head is over {MAX_HEAD} bytes.\n", "head too long")

    def eof_received(self) -> bool | None:
        if self._transport is not None:
            self._transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer = None
        self._reading = False
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()

    def timed_out(self) -> None:
        """No complete request head within head_timeout: 408 if the client sent
        anything, and close (a connection that sent nothing is closed quietly)."""
        transport = self._transport
        if transport is None:
            return
        self._reading = False
        if self._buffer:
            complaints.info("head-timeout", "%s: no complete request head within %g s, closing",
                            _peer(transport), self._door.head.timeout)
            transport.write(http_error(408, f"The request head did not arrive within "
                                            f"{self._door.head.timeout:g} s.\n"))
            transport.close()
        else:
            transport.abort()
        self._buffer = None

    # -- the head ------------------------------------------------------------------------

    def _head_complete(self, data: bytes, end: int) -> None:
        if end + 4 > MAX_HEAD:
            self._refuse(431, f"The request head is over {MAX_HEAD} bytes.\n", "head too long")
            return
        head = data[:end]
        if _KEY1 in head.lower():
            self._hixie76(head, data[end + 4:])
        else:
            self._hand_over(data)

    def _hand_over(self, data: bytes) -> None:
        transport = self._transport
        ticket = self._ticket
        assert transport is not None and ticket is not None
        self._door.head.leave(ticket)
        self._ticket = None
        self._reading = False
        handler = self._factory()
        handler.ticket = ticket
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    def _refuse(self, status: int, message: str, why: str | None) -> None:
        """Answer the first request here and close: nothing of it reaches aiohttp.
        ``why``: a malformed request's fault, for the (rate-limited) log."""
        transport = self._transport
        assert transport is not None
        self._buffer = None
        self._reading = False
        if self._ticket is not None:
            self._door.head.leave(self._ticket)
        if why is not None:
            self._door.bad_requests += 1
            complaints.warning("bad-request", "bad request from %s: %s", _peer(transport), why)
        transport.write(http_error(status, message))
        transport.close()

    def _hixie76(self, head: bytes, tail: bytes) -> None:
        """A request with Sec-WebSocket-Key1: a hixie-76 handshake, answered here on a
        SockJS WebSocket URL, refused with 400 anywhere else."""
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self._refuse(400, "Malformed request line.\n", "malformed hixie-76 request line")
            return
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                self._refuse(400, "Malformed header line.\n", "malformed hixie-76 header line")
                return
            headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        for prefix, routes in self._routes.items():
            if path.startswith(prefix + "/") and parse_path(path[len(prefix):]).transport == "websocket":
                if method != "GET":
                    break
                transport, ticket = self._transport, self._ticket
                assert transport is not None and ticket is not None
                refusal = routes.start_hixie76(transport, headers, target, self._secure, tail, ticket)
                if refusal is None:
                    self._ticket = None  # the connection owns it now
                    self._reading = False
                    return
                status, message = refusal  # 400: a malformed handshake; 403, 404, 503: not here
                self._refuse(status, message + "\n", f"hixie-76 handshake: {one_line(message)}"
                             if status == 400 else None)
                return
        self._refuse(400, "A Sec-WebSocket-Key1 header (a hixie-76 WebSocket handshake) is accepted "
                          "only by GET on a SockJS websocket URL.\n", "stray hixie-76 handshake")


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) and peer else "?"
