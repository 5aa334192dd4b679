"""Pieces of the observability tests: the gateway's configuration, the admin API over
plain HTTP, the trace WebSocket, tokens, a minimal WebSocket client on a socket (for
clients that must not read), and Chromium in a thread of its own.

Every wait is bounded (``T`` seconds unless a test says otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from support import ChromiumThread, free_port

T = 5.0
API_KEY = "dashboard-test-key"
JWT_SECRET = "dashboard-test-secret-of-at-least-32-bytes"

TUNNEL_PORT = free_port()
"""The TCP tunnel of CONFIG (its endpoint is ``/tcp/<port>``)."""

CONFIG = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{API_KEY}"

[auth]
jwt_secret = "{JWT_SECRET}"
leeway = 0

[[namespace]]
name = ""
publish = "open"
history_size = 50
presence = true

[[namespace]]
name = "quiet"
publish = "open"

[[endpoint]]
prefix = "/echo"
mode = "echo"
compress_threshold = 64

[[endpoint]]
prefix = "/live"
mode = "channels"

[[endpoint]]
prefix = "/other"
mode = "echo"

[[tunnel]]
listen = "127.0.0.1:{TUNNEL_PORT}"
channel = "tcp-room"
"""


def wait_for(predicate: Callable[[], Any], timeout: float = T, interval: float = 0.05) -> Any:
    """The first true value of ``predicate()`` within ``timeout`` seconds, else its
    last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, JWT_SECRET, algorithm="HS256")


# -- plain HTTP ---------------------------------------------------------------------------


def http(url: str, headers: dict | None = None, data: bytes | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=T) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def admin(base: str, path: str, key: str | None = API_KEY, **query: Any) -> tuple[int, Any]:
    """GET an admin API path with the key in X-API-Key; (status, parsed JSON body)."""
    url = base + path + ("?" + urlencode(query) if query else "")
    status, _, body = http(url, {"X-API-Key": key} if key else {})
    return status, json.loads(body)


def stats(base: str) -> dict:
    status, body = admin(base, "/admin/api/stats")
    assert status == 200, body
    return body["result"]


def api_command(base: str, op: str, body: dict, key: str = API_KEY) -> tuple[int, Any]:
    status, _, data = http(f"{base}/api/{op}", {"X-API-Key": key, "Content-Type": "application/json"},
                           json.dumps(body).encode(), "POST")
    return status, json.loads(data)


def watchers(base: str) -> int:
    return stats(base)["trace_watchers"]


# -- the trace WebSocket ------------------------------------------------------------------


class Trace:
    """One watcher of /admin/api/trace: the records received so far and the last
    dropped count."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, hello: dict) -> None:
        self.ws = ws
        self.hello = hello
        self.records: list[dict] = []
        self.dropped = 0

    async def until(self, predicate: Callable[[list[dict]], Any], timeout: float = T) -> list[dict]:
        """Read batches until ``predicate(records)`` holds; the records either way."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self.records):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                message = await self.ws.receive(timeout=left)
            except TimeoutError:
                break
            if message.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"the trace ended: {message}")
            frame = json.loads(message.data)
            assert frame["type"] == "batch", frame
            self.records.extend(frame["items"])
            self.dropped = frame["dropped"]
        return self.records

    async def before_marker(self, is_marker: Callable[[dict], bool], *, own_connection: bool = False,
                            timeout: float = T) -> list[dict]:
        """Read until the marker record (the last thing the test made happen) comes, and
        keep only the records before it; with ``own_connection`` (the marker was made on
        a connection of its own), before that connection's first record. A watcher gets
        records in the order they happen, so these are all that came before: instead of
        waiting for silence."""
        await self.until(lambda records: any(is_marker(r) for r in records), timeout)
        marker = next((r for r in self.records if is_marker(r)), None)
        assert marker is not None, f"the marker never came; the last records: {self.records[-5:]}"
        cut = self.records.index(marker)
        if own_connection:
            cut = next(i for i, r in enumerate(self.records) if r.get("conn") == marker["conn"])
        self.records = self.records[:cut]
        return self.records


@contextlib.asynccontextmanager
async def trace(base: str, key: str = API_KEY, **filters: str):
    """An open trace (filters: endpoint conn user channel match); the gateway has
    registered the watcher when this yields."""
    url = base.replace("http", "ws", 1) + "/admin/api/trace?" + urlencode({"key": key, **filters})
    async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
        hello = await ws.receive_json(timeout=T)
        assert hello["type"] == "trace", hello
        yield Trace(ws, hello)


def records_of(records: list[dict], **fields: Any) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in fields.items())]


# -- a WebSocket client that may never read -----------------------------------------------


class RawClient:
    """A WebSocket client on a plain socket (RFC 6455 section 4.1 handshake, masked
    frames): for a client that sends without reading what comes back."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(T)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        self.status = int(head.split(b" ", 2)[1])
        if self.status != 101:
            raise ConnectionError(head.decode(errors="replace"))

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        return head + b"\0\0\0\0" + payload  # a zero mask key is a valid mask

    def send(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(self.frame(opcode, payload))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- Chromium -----------------------------------------------------------------------------

class DashboardPage:
    """The dashboard in a fresh browser context. Methods run in the browser's thread;
    every wait in them is bounded by ``T``."""

    def __init__(self, chromium: ChromiumThread, base: str, viewport: tuple[int, int] = (1400, 1000)) -> None:
        self.chromium = chromium
        self.errors: list[str] = []

        def setup(browser):
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            page.set_default_timeout(T * 1000)
            page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
            page.goto(base + "/admin/")
            return context, page

        self.context, self.page = chromium.run(setup)

    def __call__(self, fn: Callable[[Any], Any], timeout: float = 60.0) -> Any:
        """Run ``fn(page)`` in the browser's thread."""
        return self.chromium.run(lambda browser: fn(self.page), timeout)

    def sign_in(self, key: str) -> None:
        def go(page):
            page.fill("#key-input", key)
            page.click("#key-submit")
        self(go)

    def text(self, selector: str) -> str:
        return self(lambda page: page.inner_text(selector))

    def wait_text(self, selector: str, expected: str, timeout: float = T) -> str:
        """Wait until the element's text contains ``expected``; its text."""
        def go(page):
            try:
                page.wait_for_function(
                    "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                    arg=[selector, expected], timeout=timeout * 1000)
            except PlaywrightTimeout:
                now = page.evaluate("(s) => { const e = document.querySelector(s); return e && e.innerText; }",
                                    selector)
                state = page.evaluate("""() => ['status-text', 'banner-text', 'trace-state', 'trace-counts',
                    'trace-error'].map((id) => id + ': ' + document.getElementById(id).textContent).join('\\n')""")
                tail = now if now is None else now[-1500:]
                raise AssertionError(f"{selector} did not show {expected!r} within {timeout}s; it shows "
                                     f"(end): {tail!r}\n{state}\n{self.errors}") from None
            return page.inner_text(selector)
        return self(go)

    def close(self) -> None:
        self.chromium.run(lambda browser: self.context.close())


@contextlib.contextmanager
def dashboard_page(chromium: ChromiumThread, base: str, **kwargs: Any) -> Iterator[DashboardPage]:
    page = DashboardPage(chromium, base, **kwargs)
    try:
        yield page
    finally:
        page.close()
