"""What every client connection offers."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["ClientConnection", "Closed"]


class Closed(Exception):
    """The connection is closed; ``code`` and ``reason`` say how (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code
        self.reason = reason


class ClientConnection:
    url: str
    subprotocol: str | None = None
    transport_name: str = "?"

    def __init__(self) -> None:
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""

    async def open(self) -> ClientConnection:
        raise NotImplementedError

    async def send(self, message: str | bytes) -> None:
        raise NotImplementedError

    async def close(self, code: int = 1000, reason: str = "") -> None:
        raise NotImplementedError

    def _closed(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.messages.put_nowait(Closed(code, reason))

    async def recv(self, timeout: float | None = None) -> str | bytes:
        item = await asyncio.wait_for(self.messages.get(), timeout)
        if isinstance(item, Closed):
            self.messages.put_nowait(item)  # every later recv() raises too
            raise item
        return item

    def __aiter__(self):
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except Closed:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> ClientConnection:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
