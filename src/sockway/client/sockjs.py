"""SockJS client: every transport sockjs-client offers outside a browser's iframe.

The server's frames (``o``, ``h``, ``a[...]``, ``c[...]``) are the same on every
transport; only their wrapping differs (sockway.sockjs.frames). Sending is a JSON array
of strings: a WebSocket message, or a POST to ``xhr_send`` / ``jsonp_send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import string
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import websockets

from sockway.client.base import ClientConnection
from sockway.client.streams import Splitter

__all__ = ["TRANSPORTS", "SockJSClient"]

TRANSPORTS = ("websocket", "xhr-streaming", "xhr-polling", "eventsource", "htmlfile", "jsonp-polling")
_JSONP = re.compile(rb"/\*\*/cb\((.*)\);\r\n", re.S)  # matched whole (fullmatch)


class SockJSClient(ClientConnection):
    def __init__(self, url: str, *, transport: str = "websocket", headers=None, origin=None,
                 open_timeout: float = 10.0) -> None:
        super().__init__()
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown SockJS transport {transport!r}; choose from {', '.join(TRANSPORTS)}")
        parts = urlsplit(url)
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.query = parts.query
        self.url = url
        self.transport_name = transport
        self.headers = dict(headers or {})
        if origin:
            self.headers["Origin"] = origin
        # A jsonp poll is a browser's <script> load, which sends no Origin; a gateway
        # with an allow-list judges it by its Referer. This program is not a page of
        # another site: it names the gateway's own origin, as its own page would.
        given = {name.lower() for name in self.headers}
        self._poll_headers = {} if given & {"origin", "referer"} else {
            "Referer": urlunsplit((parts.scheme, parts.netloc, "/", "", ""))}
        self.open_timeout = open_timeout
        server = f"{random.randint(0, 999):03d}"
        session = "".join(random.choices(string.ascii_lowercase + string.digits, k=16))
        self.session_url = f"{self.base}/{server}/{session}"
        self._opened = asyncio.Event()
        self._got_open = False
        self._tasks: list[asyncio.Task] = []
        self.http: aiohttp.ClientSession | None = None
        self.ws = None

    def _url(self, suffix: str, query: str = "") -> str:
        q = "&".join(x for x in (self.query, query) if x)
        return f"{self.session_url}/{suffix}" + (f"?{q}" if q else "")

    # -- frames -----------------------------------------------------------------------------

    def _frame(self, frame: str) -> bool:
        """Handle one SockJS frame; False once the session is closed."""
        if not frame:
            return True
        kind = frame[0]
        if kind == "o":
            self._got_open = True
            self._opened.set()
        elif kind == "a":
            for message in json.loads(frame[1:]):
                self.messages.put_nowait(message)
        elif kind == "c":
            code, reason = json.loads(frame[1:])
            self._opened.set()
            self._closed(code, reason)
            return False
        return True

    # -- opening ----------------------------------------------------------------------------

    async def open(self) -> SockJSClient:
        loop = asyncio.get_running_loop()
        if self.transport_name == "websocket":
            scheme = "wss" if self.base.startswith("https") else "ws"
            url = scheme + self._url("websocket")[len(self.base.split(":")[0]):]
            self.ws = await websockets.connect(url, additional_headers=self.headers or None,
                                               open_timeout=self.open_timeout, max_size=None,
                                               ping_interval=None)
            self._tasks.append(loop.create_task(self._read_websocket()))
        else:
            self.http = aiohttp.ClientSession(headers=self.headers)
            reader = {
                "xhr-streaming": self._read_xhr_streaming,
                "xhr-polling": self._read_polling,
                "eventsource": self._read_eventsource,
                "htmlfile": self._read_htmlfile,
                "jsonp-polling": self._read_polling,
            }[self.transport_name]
            self._tasks.append(loop.create_task(self._guard(reader())))
        try:
            await asyncio.wait_for(self._opened.wait(), self.open_timeout)
        except TimeoutError:
            await self._shutdown()
            raise ConnectionError(f"SockJS session at {self.base} did not open within "
                                  f"{self.open_timeout}s over {self.transport_name}") from None
        if not self._got_open:
            # The transport failed (or the server closed the session) before the "o"
            # frame: the connection never opened.
            await self._shutdown()
            raise ConnectionError(self.close_reason or f"closed {self.close_code} before opening")
        return self

    async def _guard(self, coro) -> None:
        try:
            await coro
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            self._closed(1006, f"connection lost: {exc}" if self._got_open else str(exc) or type(exc).__name__)
            self._opened.set()

    # -- receiving ----------------------------------------------------------------------------

    async def _read_websocket(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                if not self._frame(message if isinstance(message, str) else message.decode()):
                    break
        except websockets.ConnectionClosed:
            pass
        self._opened.set()
        self._closed(1006, "connection lost")

    async def _read_xhr_streaming(self) -> None:
        assert self.http is not None
        while self.close_code is None:
            async with self.http.post(self._url("xhr_streaming")) as response:
                await self._check(response)
                lines = Splitter(b"\n")
                async for chunk in response.content.iter_any():
                    for line in lines.feed(chunk):
                        if line.startswith(b"hhhh"):
                            continue  # the 2 KiB prelude
                        if not self._frame(line.decode()):
                            return
            # The server ended the response (response_limit): open the next one.

    async def _read_eventsource(self) -> None:
        assert self.http is not None
        while self.close_code is None:
            async with self.http.get(self._url("eventsource")) as response:
                await self._check(response)
                events = Splitter(b"\r\n\r\n")
                async for chunk in response.content.iter_any():
                    for event in events.feed(chunk):
                        for line in event.split(b"\r\n"):
                            if line.startswith(b"data: ") and not self._frame(line[6:].decode()):
                                return

    async def _read_htmlfile(self) -> None:
        assert self.http is not None
        while self.close_code is None:
            async with self.http.get(self._url("htmlfile", "c=cb")) as response:
                await self._check(response)
                scripts = Splitter(b"</script>\r\n")
                async for chunk in response.content.iter_any():
                    for script in scripts.feed(chunk):
                        # <script>\np(<JSON string>);\n, after the page's head for the first.
                        start = script.find(b"<script>\np(")
                        if start < 0:
                            continue  # the page's head
                        if not script.endswith(b");\n"):
                            raise ConnectionError(f"unexpected htmlfile content {script[start:start + 80]!r}")
                        if not self._frame(json.loads(script[start + 11:-3])):
                            return

    async def _read_polling(self) -> None:
        assert self.http is not None
        jsonp = self.transport_name == "jsonp-polling"
        while self.close_code is None:
            if jsonp:
                request = self.http.get(self._url("jsonp", "c=cb"), headers=self._poll_headers)
            else:
                request = self.http.post(self._url("xhr"))
            async with request as response:
                await self._check(response)
                body = await response.read()
            if jsonp:
                match = _JSONP.fullmatch(body)
                if match is None:
                    raise ConnectionError(f"unexpected jsonp response {body[:80]!r}")
                frame = json.loads(match.group(1))
            else:
                frame = body.decode().rstrip("\n")
            if not self._frame(frame):
                return

    @staticmethod
    async def _check(response: aiohttp.ClientResponse) -> None:
        if response.status != 200:
            body = (await response.text(errors="replace")).strip()[:200]
            raise ConnectionError(f"HTTP {response.status}" + (f": {body}" if body else "")
                                  + f" (SockJS {response.method} {response.url.path})")

    # -- sending --------------------------------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        payload = json.dumps([message])
        if self.ws is not None:
            await self.ws.send(payload)
            return
        assert self.http is not None
        if self.transport_name == "jsonp-polling":
            body = "d=" + quote(payload)
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            async with self.http.post(self._url("jsonp_send"), data=body, headers=headers) as r:
                text = await r.text()
                if r.status != 200:
                    raise ConnectionError(f"jsonp_send answered {r.status}: {text.strip()}")
        else:
            async with self.http.post(self._url("xhr_send"), data=payload.encode()) as r:
                text = await r.text()
                if r.status != 204:
                    raise ConnectionError(f"xhr_send answered {r.status}: {text.strip()}")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._closed(code, reason)
        await self._shutdown()

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.http is not None:
            await self.http.close()
