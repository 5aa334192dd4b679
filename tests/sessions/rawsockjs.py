"""SockJS session requests made one by one (aiohttp), for tests that need to control
each HTTP request of a session: hold a poll, open a second receiving request, abort
one, look at the frames of every transport and at which upstream served it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from urllib.parse import quote, urlsplit

import aiohttp

T = 5.0

# Transport (sockjs-client's name) -> (method, URL suffix, query)
RECEIVE = {
    "xhr-polling": ("POST", "xhr", ""),
    "jsonp-polling": ("GET", "jsonp", "c=cb"),
    "xhr-streaming": ("POST", "xhr_streaming", ""),
    "eventsource": ("GET", "eventsource", ""),
    "htmlfile": ("GET", "htmlfile", "c=cb"),
}
POLLING = ("xhr-polling", "jsonp-polling")
STREAMING = ("xhr-streaming", "eventsource", "htmlfile")
TRANSPORTS = (*POLLING, *STREAMING)

_SCRIPT = re.compile(rb"<script>\np\((.*?)\);\n</script>\r\n", re.S)
_JSONP = re.compile(rb"/\*\*/cb\((.*?)\);\r\n", re.S)


def frames_in(transport: str, buffer: bytes) -> tuple[list[str], bytes]:
    """Complete frames at the start of ``buffer`` (preludes skipped), and the rest."""
    out: list[str] = []
    if transport in ("xhr-polling", "xhr-streaming"):
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.startswith(b"hhhhhhhh"):
                out.append(line.decode())
    elif transport == "eventsource":
        while b"\r\n\r\n" in buffer or buffer.startswith(b"\r\n"):
            if buffer.startswith(b"\r\n"):
                buffer = buffer[2:]
                continue
            event, buffer = buffer.split(b"\r\n\r\n", 1)
            for line in event.split(b"\r\n"):
                if line.startswith(b"data: "):
                    out.append(line[6:].decode())
    elif transport == "htmlfile":
        while True:
            start = buffer.find(b"<script>\np(")
            match = _SCRIPT.match(buffer, start) if start >= 0 else None
            if match is None:
                break
            out.append(json.loads(match.group(1)))
            buffer = buffer[match.end():]
    else:  # jsonp-polling
        while (match := _JSONP.match(buffer)) is not None:
            out.append(json.loads(match.group(1)))
            buffer = buffer[match.end():]
    return out, buffer


class Receiving:
    """One receiving request, read frame by frame. A poll's response (and so its
    upstream) comes only with its frame; a stream's as soon as the session is attached."""

    def __init__(self, transport: str, task: asyncio.Task) -> None:
        self.transport = transport
        self.task = task
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read later, or never
        self.buffer = b""
        self.frames: list[str] = []

    async def response(self, timeout: float = T + 30) -> aiohttp.ClientResponse:
        response = await asyncio.wait_for(asyncio.shield(self.task), timeout)
        assert response.status == 200, (self.transport, response.status, await response.text())
        return response

    @property
    def upstream(self) -> str:
        """The upstream that served it (known once its response has come)."""
        return self.task.result().headers.get("X-Upstream", "")

    async def frame(self, timeout: float = T) -> str:
        """The next frame; "" when the response ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        response = await self.response(timeout)
        while not self.frames:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no frame within {timeout}s over {self.transport}")
            chunk = await asyncio.wait_for(response.content.readany(), remaining)
            if not chunk:
                return ""
            found, self.buffer = frames_in(self.transport, self.buffer + chunk)
            self.frames.extend(found)
        return self.frames.pop(0)

    def abort(self) -> None:
        """Close the connection under the request, as a client going away does."""
        if not self.task.done():
            self.task.cancel()
        elif not self.task.cancelled() and self.task.exception() is None:
            self.task.result().close()

    def release(self) -> None:
        if self.task.done() and not self.task.cancelled() and self.task.exception() is None:
            self.task.result().release()


class RawSession:
    """The requests of one SockJS session, made by hand through ``base`` (an endpoint's
    URL). Every request uses a new connection, so that an aborted one cannot be reused."""

    def __init__(self, base: str, session_id: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.session_id = session_id or os.urandom(8).hex()
        self.url = f"{self.base}/000/{self.session_id}"
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                          timeout=aiohttp.ClientTimeout(total=None, sock_connect=T))

    async def __aenter__(self) -> RawSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.close()

    async def receiving(self, transport: str) -> Receiving:
        """Start a receiving request: a stream's response headers have come when this
        returns (it is attached); a poll has been sent."""
        method, suffix, query = RECEIVE[transport]
        url = f"{self.url}/{suffix}" + (f"?{query}" if query else "")
        # A jsonp poll is a <script> load: no Origin, and a gateway with an allow-list (the
        # same-origin default too) wants the Referer of a page it allows: the gateway's own.
        parts = urlsplit(self.base)
        headers = {"Referer": f"{parts.scheme}://{parts.netloc}/"} if transport == "jsonp-polling" else None
        receiving = Receiving(transport, asyncio.ensure_future(self.http.request(method, url, headers=headers)))
        if transport in STREAMING:
            await receiving.response()
        else:
            await asyncio.sleep(0.05)  # on its way
        return receiving

    async def receive(self, transport: str, timeout: float = T + 30) -> tuple[str, str]:
        """One receiving request's first frame (a poll's only one) and its upstream;
        a streaming request is closed after that frame."""
        receiving = await self.receiving(transport)
        try:
            return await receiving.frame(timeout), receiving.upstream
        finally:
            receiving.abort() if transport in STREAMING else receiving.release()

    async def open(self, transport: str = "xhr-polling") -> str:
        """Open the session; returns the upstream that served the first request."""
        frame, upstream = await self.receive(transport)
        assert frame == "o", frame
        return upstream

    async def send(self, *messages: str, transport: str = "xhr-polling") -> tuple[int, str, str]:
        """(status, body, upstream) of an xhr_send (jsonp_send for jsonp-polling)."""
        payload = json.dumps(list(messages))
        if transport == "jsonp-polling":
            request = self.http.post(f"{self.url}/jsonp_send", data="d=" + quote(payload),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            request = self.http.post(f"{self.url}/xhr_send", data=payload.encode())
        async with request as response:
            return response.status, await response.text(), response.headers.get("X-Upstream", "")

    async def send_raw(self, body: bytes, transport: str = "xhr-polling") -> tuple[int, str, str]:
        suffix = "jsonp_send" if transport == "jsonp-polling" else "xhr_send"
        headers = {"Content-Type": "text/plain"}
        async with self.http.post(f"{self.url}/{suffix}", data=body, headers=headers) as response:
            return response.status, await response.text(), response.headers.get("X-Upstream", "")


async def drain(receiving: Receiving, want: str, timeout: float = T) -> list[str]:
    """Frames of ``receiving`` up to and including ``want`` (heartbeats included)."""
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await receiving.frame(max(0.01, deadline - loop.time()))
        got.append(frame)
        if frame == want or frame == "":
            return got


@contextlib.asynccontextmanager
async def raw_session(base: str):
    session = RawSession(base)
    try:
        yield session
    finally:
        await session.close()
