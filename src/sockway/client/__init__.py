"""Python clients for sockway (and any WebSocket or SockJS server), asyncio.

    from sockway.client import connect

    async with connect("ws://127.0.0.1:8080/echo/websocket") as conn:   # raw WebSocket
        await conn.send("hello")
        print(await conn.recv())

    async with connect("http://127.0.0.1:8080/echo", transport="xhr-streaming") as conn:
        ...                                                               # SockJS

``recv()`` returns a message (``str``, or ``bytes`` for binary WebSocket messages) and
raises :class:`Closed` (with the code and reason) once the connection is closed. Used
by ``sockway cat``, the tests and the benchmarks' checks.
"""

from sockway.client.base import ClientConnection, Closed
from sockway.client.sockjs import TRANSPORTS, SockJSClient
from sockway.client.websocket import WebSocketClient

__all__ = ["TRANSPORTS", "ClientConnection", "Closed", "SockJSClient", "WebSocketClient", "connect"]


def connect(url: str, *, transport: str = "websocket", headers: dict[str, str] | None = None,
            origin: str | None = None, subprotocols: list[str] | None = None,
            token: str | None = None, open_timeout: float = 10.0) -> ClientConnection:
    """A connection to ``url``: ws:// or wss:// is raw WebSocket, http:// or https:// is
    a SockJS endpoint reached with ``transport``. Use with ``async with`` or ``await
    conn.open()``."""
    if token is not None:
        from urllib.parse import urlencode

        url += ("&" if "?" in url else "?") + urlencode({"token": token})
    if url.startswith(("ws://", "wss://")):
        return WebSocketClient(url, headers=headers, origin=origin, subprotocols=subprotocols,
                               open_timeout=open_timeout)
    if url.startswith(("http://", "https://")):
        return SockJSClient(url, transport=transport, headers=headers, origin=origin,
                            open_timeout=open_timeout)
    raise ValueError(f"unsupported URL {url!r}: use ws://, wss:// (WebSocket) or http://, https:// (SockJS)")
