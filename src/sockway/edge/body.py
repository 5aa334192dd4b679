"""Reading a request body whole, bounded in bytes and in time: the one body reader of
every handler (SockJS sends, the HTTP API).

``StreamReader.read(n)`` returns what has arrived so far, up to n bytes: a body that
comes in several TCP segments (a slow uplink, a large message) takes several reads.
A client that announces a body and sends it slowly, or never, would hold the request
(and its connection) forever: the whole body must arrive within ``timeout`` seconds
(``[server] body_timeout``), measured with one asyncio timer per body. A body over
``limit`` bytes is refused as soon as it is known to be (from Content-Length, or when
the bytes read pass the limit), without buffering the rest. After a 408 the connection is closed without
reading the rest of the body.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from sockway.edge.http_protocol import HttpConnection

__all__ = ["BodyError", "read_body"]


class BodyError(Exception):
    """The body cannot be read: ``status`` 413 (too large) or 408 (too slow), with a
    message for the client. The caller answers with them and lets the connection go."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    """The whole body of ``request``: at most ``limit`` bytes, within ``timeout`` seconds."""
    too_large = BodyError(413, f"the body is over the {limit} byte limit")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await content.read(limit + 1 - size)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        protocol = request.protocol
        if isinstance(protocol, HttpConnection):
            protocol.no_lingering()  # what is left of this body is not worth waiting for
        raise BodyError(408, f"the body did not arrive within {timeout:g} s") from None
