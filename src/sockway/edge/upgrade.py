"""Accepting a WebSocket upgrade that aiohttp has parsed, and taking the connection over.

The opening handshake (RFC 6455 section 4.2) is checked and negotiated by the
``websockets`` Sans-I/O ``ServerProtocol.accept``: key, version, permessage-deflate
parameters (RFC 7692 section 7.1) and subprotocol (section 4.2.2: the endpoint's first
subprotocol that the client offered, or none; never a refusal). A refusal goes back
through aiohttp as an ordinary HTTP response; one for an unsupported version says which
version the server speaks (section 4.4). An acceptance is written straight to the
transport, and the transport is detached from aiohttp: aiohttp is told the connection
is gone (``connection_lost``, which unregisters it and stops its timers without closing
the socket) and the transport's protocol becomes a
:class:`~sockway.edge.websocket.WebSocketConnection`. From then on no aiohttp object,
request, task or buffer is held for the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiohttp import web
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from sockway.edge.admission import Ticket

__all__ = ["Detached", "accept_websocket", "detach"]

# websockets logs every open and close at INFO; a gateway has too many for that.
_protocol_log = logging.getLogger("sockway.ws.protocol")
_protocol_log.setLevel(logging.WARNING)


def select_subprotocol(protocol: ServerProtocol, offered: Sequence[str]) -> str | None:
    """RFC 6455 section 4.2.2 /subprotocol/: the first of the endpoint's subprotocols
    (its list is in order of preference) that the client offered. Nothing in common,
    or nothing offered, is not an error: the connection opens without a subprotocol
    and the response has no Sec-WebSocket-Protocol header, and the client decides."""
    for subprotocol in protocol.available_subprotocols or ():
        if subprotocol in offered:
            return subprotocol
    return None


def refusal_response(handshake: ServerProtocol, status: int, body: bytes,
                     headers: Headers) -> web.Response:
    """The HTTP error for a refused handshake. A missing or unsupported
    Sec-WebSocket-Version gets a Sec-WebSocket-Version header naming the version this
    server speaks (section 4.4), with 426 Upgrade Required when a version was given."""
    exc = handshake.handshake_exc
    version = isinstance(exc, InvalidHeader) and exc.name == "Sec-WebSocket-Version"
    if version and exc.value is not None:  # type: ignore[union-attr]
        status = 426
    refusal = web.Response(status=status, body=body, content_type="text/plain", charset="utf-8")
    for name in ("Allow", "Upgrade"):
        if name in headers:
            refusal.headers[name] = headers[name]
    if version:
        refusal.headers["Sec-WebSocket-Version"] = "13"
        if status == 426:  # RFC 9110 section 15.5.22: a 426 names the protocol to use
            refusal.headers["Upgrade"] = "websocket"
            refusal.headers["Connection"] = "Upgrade"
    return refusal


class Detached(web.StreamResponse):
    """Returned by a handler whose connection has been taken over: aiohttp has nothing
    left to write."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request):  # type: ignore[override]
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def detach(request: web.BaseRequest) -> tuple[asyncio.Transport, bytes, Ticket | None]:
    """Take the request's TCP transport away from aiohttp. Returns the transport, any
    bytes aiohttp had received after the request head (only the legacy hixie-76
    handshake sends any before the server answers), and the connection's ticket (its
    place under the server's TCP limits), which the new owner releases when the
    connection is gone."""
    protocol = request.protocol
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away during the handshake")
    tail = bytes(getattr(protocol, "_message_tail", b"") or b"")
    ticket = getattr(protocol, "ticket", None)
    if ticket is not None:
        protocol.ticket = None
    # Unlink first: aiohttp closes the transport it holds when told of a lost connection.
    protocol.transport = None
    protocol.connection_lost(None)
    return transport, tail, ticket


def accept_websocket(
    request: web.BaseRequest,
    *,
    deflate: bool,
    window_bits: int,
    subprotocols: list[str] | None,
    max_size: int,
) -> tuple[ServerProtocol | None, bytes, int, web.Response | None]:
    """Run the opening handshake. Returns ``(protocol, response_bytes, wbits, None)``
    on success (``wbits`` is the server window for outgoing compression, 0 when
    permessage-deflate was not negotiated), or ``(None, b"", 0, refusal)``."""
    extensions = []
    if deflate:
        extensions.append(
            ServerPerMessageDeflateFactory(
                # Each outgoing message is compressed on its own, once for all its
                # recipients: say so, so that clients need not keep a window for us.
                server_no_context_takeover=True,
                # ...and ask clients to do the same, so that an idle connection holds
                # no inflate state (zlib keeps 7 KiB, then a 32 KiB window, per
                # context). Client messages are usually small; they compress less.
                client_no_context_takeover=True,
                server_max_window_bits=window_bits if window_bits < 15 else None,
            )
        )
    handshake = ServerProtocol(
        extensions=extensions,
        subprotocols=subprotocols or None,
        select_subprotocol=select_subprotocol,
        max_size=max_size,
        logger=_protocol_log,
    )
    headers = Headers()
    for name, value in request.raw_headers:
        headers[name.decode("latin-1")] = value.decode("latin-1")
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    ws_request = Request(request.raw_path, headers, method=request.method, protocol=version)
    response = handshake.accept(ws_request)
    if response.status_code != 101:
        return None, b"", 0, refusal_response(handshake, response.status_code, response.body,
                                               response.headers)
    wbits = 0
    for extension in handshake.extensions:
        if isinstance(extension, PerMessageDeflate):
            wbits = extension.local_max_window_bits or 15
    del response.headers["Date"]
    live = ServerProtocol(state=State.OPEN, max_size=max_size, logger=_protocol_log)
    live.extensions = handshake.extensions
    return live, response.serialize(), wbits, None
