"""Raw WebSocket client (RFC 6455) on the ``websockets`` library."""

from __future__ import annotations

import asyncio
import contextlib

import websockets

from sockway.client.base import ClientConnection

__all__ = ["WebSocketClient"]


class WebSocketClient(ClientConnection):
    transport_name = "websocket"

    def __init__(self, url: str, *, headers=None, origin=None, subprotocols=None,
                 open_timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self.headers = dict(headers or {})
        self.origin = origin
        self.subprotocols = subprotocols
        self.open_timeout = open_timeout
        self.ws = None
        self._reader: asyncio.Task | None = None

    async def open(self) -> WebSocketClient:
        self.ws = await websockets.connect(
            self.url, additional_headers=self.headers or None, origin=self.origin,
            subprotocols=self.subprotocols, open_timeout=self.open_timeout, max_size=None,
            ping_interval=None,
        )
        self.subprotocol = self.ws.subprotocol
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                self.messages.put_nowait(message)
        except websockets.ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        if rcvd is not None:
            self._closed(rcvd.code, rcvd.reason)
        else:
            self._closed(1006, "connection lost")

    async def send(self, message: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws is not None:
            await self.ws.close(code, reason)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 5)
