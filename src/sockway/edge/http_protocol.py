"""aiohttp's HTTP/1.1 connection protocol, held to the gateway's limits.

One per HTTP connection, after the first request head (:mod:`sockway.edge.sniffer`):

* it releases the connection's :class:`~sockway.edge.admission.Ticket` when the
  connection is gone (a connection upgraded to a WebSocket takes its ticket along);
* a response the client does not read (the transport's buffer over its high-water
  mark, writes paused) for ``send_timeout`` seconds aborts the connection, whatever
  the response: a SockJS poll or stream, a file, an API answer. aiohttp would wait for
  it forever, and so would a close with unsent data;
* bad input costs one rate-limited warning line, never a traceback: a malformed
  request gets its 400 from aiohttp, and the log a line without the traceback aiohttp
  gives it (about a dozen lines for a 40-byte request); a client that goes away in the
  middle of a response is counted, not logged.

Later request heads on a keep-alive connection are bounded by aiohttp's own
keep-alive timer (``keepalive_timeout``): after a response, the next head must be
complete before it fires, or the connection is closed (aiohttp closes an idle
connection when no complete request has come; a half-sent head counts as idle).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sockway.edge.admission import Ticket, complaints

if TYPE_CHECKING:
    from sockway.edge.admission import Door

__all__ = ["HttpConnection", "one_line"]


def one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line, at most ``limit`` characters: what a log line may quote
    of a client's input."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


class HttpConnection(web.RequestHandler):
    __slots__ = ("_door", "_raw", "ticket")

    def __init__(self, manager: web.Server, door: Door, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._door = door
        self._raw: asyncio.Transport | None = None
        """The transport while this protocol owns it (aiohttp forgets it when it
        closes it, before it is gone)."""
        self.ticket: Ticket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._door.send.leave(self)
        self._raw = None
        ticket, self.ticket = self.ticket, None
        super().connection_lost(exc)
        if ticket is not None:
            ticket.release()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._door.send.enter(self, self, self._door.loop.time())

    def resume_writing(self) -> None:
        self._door.send.leave(self)
        super().resume_writing()

    def no_lingering(self) -> None:
        """Close the connection after this response without reading what is left of the
        request body: aiohttp would otherwise read and drop it for up to 10 s (its
        lingering_time, meant for a client still sending a body that was refused)."""
        self._lingering_time = 0.0

    def timed_out(self) -> None:
        """Writes stayed paused for send_timeout: the client does not read."""
        raw = self._raw
        if raw is not None:
            complaints.info("send-timeout", "%s: a response was not read for %g s, closing",
                            _peer(raw), self._door.send.timeout)
            raw.abort()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            self._door.bad_requests += 1
        return super().handle_error(request, status, exc, message)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            # aiohttp's message quotes the line and points at the fault with a caret.
            complaints.warning("bad-request", "bad request from %s: %s", _peer(self._raw),
                               one_line(exc.message).rstrip(" ^"))
            return
        if isinstance(exc, ConnectionError):
            self._door.client_resets += 1
            return
        super().log_exception(*args, **kwargs)


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[0] if isinstance(peer, tuple) and peer else "?"
