"""The first bytes of each connection, before aiohttp sees them.

aiohttp refuses any request carrying ``Sec-WebSocket-Key1`` with 400 before routing:
the legacy hixie-76 handshake sends 8 key bytes after its headers without declaring a
body length, which an HTTP parser cannot tell from a pipelined request (a smuggling
risk). The SockJS protocol suite still checks that handshake (``Websocket.test_haproxy``),
so this protocol looks at the request head of each new connection: a hixie-76
handshake for a SockJS WebSocket URL is answered here; anything else is handed, with the
bytes already read, to aiohttp's request handler, which then owns the connection as if
it had accepted it itself (one extra callback for the first packet, nothing after).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from sockway.sockjs.urls import parse_path

if TYPE_CHECKING:
    from sockway.edge.routes import EndpointRoutes

__all__ = ["FirstRequestSniffer"]

MAX_HEAD = 16384
_KEY1 = b"sec-websocket-key1:"


class FirstRequestSniffer(asyncio.Protocol):
    __slots__ = ("_buffer", "_factory", "_routes", "_secure", "_sndbuf", "_transport")

    def __init__(self, factory: Callable[[], asyncio.Protocol], routes: dict[str, EndpointRoutes],
                 secure: bool, sndbuf: int = 0) -> None:
        self._factory = factory
        self._routes = routes
        self._secure = secure
        self._sndbuf = sndbuf
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._sndbuf:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 and len(buffer) < MAX_HEAD:
            self._buffer = buffer
            return
        head = buffer[:end] if end >= 0 else b""
        if end >= 0 and _KEY1 in head.lower() and self._hixie76(head, buffer[end + 4:]):
            return
        self._hand_over(buffer)

    def eof_received(self) -> bool | None:
        if self._transport is not None:
            self._transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def _hand_over(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        handler = self._factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def _hixie76(self, head: bytes, tail: bytes) -> bool:
        """Answer a hixie-76 handshake on a SockJS WebSocket URL; False to let aiohttp
        refuse anything else."""
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        except ValueError:
            return False
        path = target.split("?", 1)[0]
        for prefix, routes in self._routes.items():
            if not path.startswith(prefix + "/"):
                continue
            route = parse_path(path[len(prefix):])
            if method != "GET" or route.transport != "websocket" or "sec-websocket-key2" not in headers:
                return False
            transport = self._transport
            assert transport is not None
            return routes.start_hixie76(transport, headers, target, self._secure, tail)
        return False
