"""Real clients for the channels and bridge tests: raw WebSocket (the ``websockets``
client on ``/prefix/websocket``), SockJS over WebSocket (``/prefix/000/<id>/websocket``,
frames ``o``, ``h``, ``a[...]``, ``c[...]``), SockJS xhr-polling over plain HTTP, a
channels-protocol client on top of any of them, the HTTP API and ZeroMQ workers.

Everything here is asyncio; tests run a coroutine with :func:`run` (bounded by a
timeout), so no pytest plugin is needed. Every wait takes a timeout in seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import websockets
import zmq
import zmq.asyncio
from websockets.asyncio.client import connect as ws_connect

__all__ = [
    "KEY",
    "Api",
    "ChannelsClient",
    "Closed",
    "RawWS",
    "SockJSWS",
    "T",
    "XhrSession",
    "ZmqWorker",
    "eventually",
    "health",
    "rss_kib",
    "run",
    "until_closed",
    "zmq_address",
]

T = 5.0
"""The default bound of one wait, in seconds."""
KEY = "test-api-key"


def run(timeout: float = 60.0):
    """Decorator: run the test coroutine with ``asyncio.run``, bounded by ``timeout``."""

    def wrap(fn):
        @functools.wraps(fn)
        def runner(*args, **kwargs):
            async def bounded():
                return await asyncio.wait_for(fn(*args, **kwargs), timeout)

            return asyncio.run(bounded())

        return runner

    return wrap


async def until_closed(transport, timeout: float = T) -> Closed:
    """Read (and drop) whatever a transport receives until the server closes it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await transport.recv_text(max(0.01, deadline - time.monotonic()))
        except Closed as exc:
            return exc


async def eventually(predicate: Callable[[], Any], timeout: float = T, interval: float = 0.05) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def zmq_address() -> str:
    from support import free_port

    return f"tcp://127.0.0.1:{free_port()}"


# -- transports ----------------------------------------------------------------------------


class Closed(Exception):
    """The server closed the connection with ``code`` and ``reason``."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class RawWS:
    """A raw WebSocket client (``websockets``) on ``<base>/websocket``."""

    def __init__(self, ws) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str, **kwargs) -> RawWS:
        ws = await ws_connect(url, open_timeout=T, close_timeout=2, ping_interval=None,
                              max_size=None, compression=None, **kwargs)
        return cls(ws)

    async def send_text(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def recv_text(self, timeout: float = T) -> str | bytes:
        try:
            return await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def drop(self) -> None:
        """Cut the TCP connection without a closing handshake."""
        self.ws.transport.abort()


class SockJSWS:
    """SockJS over WebSocket: ``<base>/000/<session>/websocket``."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.queue: collections.deque[str] = collections.deque()
        self.closed: Closed | None = None

    @classmethod
    async def connect(cls, base: str, session: str | None = None, query: str = "") -> SockJSWS:
        session = session or os.urandom(6).hex()
        url = f"{base}/000/{session}/websocket" + (f"?{query}" if query else "")
        ws = await ws_connect(url, open_timeout=T, close_timeout=2, ping_interval=None,
                              max_size=None, compression=None)
        first = await asyncio.wait_for(ws.recv(), T)
        if first != "o":
            raise AssertionError(f"expected the open frame 'o', got {first!r}")
        return cls(ws)

    async def send_text(self, text: str) -> None:
        await self.ws.send(json.dumps([text]))

    async def send_many(self, texts: list[str]) -> None:
        await self.ws.send(json.dumps(texts))

    async def recv_text(self, timeout: float = T) -> str:
        deadline = time.monotonic() + timeout
        while not self.queue:
            if self.closed is not None:
                raise self.closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                frame = await asyncio.wait_for(self.ws.recv(), remaining)
            except websockets.ConnectionClosed as exc:
                self.closed = Closed(exc.rcvd.code if exc.rcvd else None,
                                     exc.rcvd.reason if exc.rcvd else "")
                continue
            self._frame(frame)
        return self.queue.popleft()

    def _frame(self, frame: str) -> None:
        if frame == "h":
            return
        if frame.startswith("a"):
            self.queue.extend(json.loads(frame[1:]))
        elif frame.startswith("c"):
            code, reason = json.loads(frame[1:])
            self.closed = Closed(code, reason)
        else:
            raise AssertionError(f"unexpected SockJS frame {frame!r}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def drop(self) -> None:
        self.ws.transport.abort()


class XhrSession:
    """A SockJS session on the xhr-polling transport, over plain HTTP requests."""

    def __init__(self, http: aiohttp.ClientSession, base: str, session: str | None = None) -> None:
        self.http = http
        self.base = f"{base}/000/{session or os.urandom(6).hex()}"
        self.queue: collections.deque[str] = collections.deque()
        self.closed: Closed | None = None

    async def open(self, query: str = "") -> XhrSession:
        async with self.http.post(self.base + "/xhr" + (f"?{query}" if query else ""),
                                  timeout=aiohttp.ClientTimeout(total=T)) as r:
            body = (await r.text()).strip()
        if body != "o":
            raise AssertionError(f"expected 'o', got {body!r}")
        return self

    async def send_many(self, texts: list[str]) -> int:
        async with self.http.post(self.base + "/xhr_send", data=json.dumps(texts),
                                  timeout=aiohttp.ClientTimeout(total=T)) as r:
            await r.read()
            return r.status

    async def send_text(self, text: str) -> None:
        status = await self.send_many([text])
        if status != 204:
            raise Closed(None, f"xhr_send answered {status}")

    async def poll(self, timeout: float = T) -> None:
        async with self.http.post(self.base + "/xhr", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            frame = (await r.text()).strip()
        if frame == "h":
            return
        if frame.startswith("a"):
            self.queue.extend(json.loads(frame[1:]))
        elif frame.startswith("c"):
            self.closed = Closed(*json.loads(frame[1:]))
        else:
            raise AssertionError(f"unexpected frame {frame!r}")

    async def recv_text(self, timeout: float = T) -> str:
        deadline = time.monotonic() + timeout
        while not self.queue:
            if self.closed is not None:
                raise self.closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            # A poll cut short by the client closes the session (sockjs-protocol
            # "Connection interrupted"): let it end on its own, with data or the
            # server's heartbeat, so use endpoints with a short heartbeat_delay.
            await self.poll(max(remaining, 0) + 30)
        return self.queue.popleft()

    async def close(self) -> None:
        pass

    async def drop(self) -> None:
        pass


# -- the channels protocol ------------------------------------------------------------------


class ChannelsClient:
    """The channels protocol over any transport above.

    :meth:`request` sends a command with an ``id`` and returns its reply; whatever else
    arrives meanwhile (publications, join/leave, errors) is kept, in order, for
    :meth:`next`.
    """

    _ids = itertools.count(1)

    def __init__(self, transport) -> None:
        self.t = transport
        self.inbox: collections.deque[dict] = collections.deque()
        self.welcome: dict | None = None

    @classmethod
    async def connect(cls, gw, prefix: str, *, sockjs: bool = False, token: str | None = None,
                      welcome: bool = True) -> ChannelsClient:
        query = f"token={token}" if token is not None else ""
        if sockjs:
            transport = await SockJSWS.connect(gw.ws_url + prefix, query=query)
        else:
            url = gw.ws_url + prefix + "/websocket" + (f"?{query}" if query else "")
            transport = await RawWS.connect(url)
        client = cls(transport)
        if welcome:
            client.welcome = await client.next("connected")
        return client

    @property
    def conn(self) -> str:
        assert self.welcome is not None
        return self.welcome["conn"]

    async def send(self, obj: Any) -> None:
        await self.t.send_text(obj if isinstance(obj, str) else json.dumps(obj))

    async def _read(self, timeout: float) -> dict:
        text = await self.t.recv_text(timeout)
        return json.loads(text)

    async def request(self, op: str, timeout: float = T, **fields) -> dict:
        request_id = next(self._ids)
        await self.send({"op": op, "id": request_id, **fields})
        deadline = time.monotonic() + timeout
        while True:
            message = await self._read(max(0.01, deadline - time.monotonic()))
            if message.get("type") == "reply" and message.get("id") == request_id:
                return message
            self.inbox.append(message)

    async def ok(self, op: str, timeout: float = T, **fields) -> dict:
        reply = await self.request(op, timeout, **fields)
        assert "result" in reply, reply
        return reply["result"]

    async def error(self, op: str, timeout: float = T, **fields) -> str:
        reply = await self.request(op, timeout, **fields)
        assert "error" in reply, reply
        assert set(reply["error"]) == {"code", "message"} and reply["error"]["message"]
        return reply["error"]["code"]

    async def next(self, kind: str | None = None, timeout: float = T) -> dict:
        """The next message (of type ``kind``), skipping others of other types."""
        deadline = time.monotonic() + timeout
        while True:
            if self.inbox:
                message = self.inbox.popleft()
            else:
                message = await self._read(max(0.01, deadline - time.monotonic()))
            if kind is None or message.get("type") == kind:
                return message

    async def messages(self, count: int, timeout: float = T, kind: str = "message") -> list[dict]:
        return [await self.next(kind, timeout) for _ in range(count)]

    async def before_marker(self, timeout: float = T) -> list[dict]:
        """Everything received before the reply to a ping sent now, the marker: what was
        waiting, and whatever the gateway sent this connection before it answered the
        ping (expected, usually: nothing). Instead of waiting for silence: replies and
        everything a memory broker delivers are queued in order, so anything due before
        now is in the list. (Publications through Redis or NATS may lag the ping: for
        those, publish a marker on the channel itself.)"""
        marker = f"marker-{next(self._ids)}"
        await self.send({"op": "ping", "id": marker})
        got = list(self.inbox)
        self.inbox.clear()
        deadline = time.monotonic() + timeout
        while True:
            message = await self._read(max(0.01, deadline - time.monotonic()))
            if message.get("type") == "reply" and message.get("id") == marker:
                return got
            got.append(message)

    async def closed(self, timeout: float = T) -> Closed:
        """Read until the server closes; returns the close."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.inbox.append(await self._read(max(0.01, deadline - time.monotonic())))
            except Closed as exc:
                return exc

    async def close(self) -> None:
        await self.t.close()

    async def drop(self) -> None:
        await self.t.drop()


# -- the application side -------------------------------------------------------------------


class Api:
    """The HTTP API with the key (or another, or none)."""

    def __init__(self, http: aiohttp.ClientSession, gw, key: str | None = KEY) -> None:
        self.http = http
        self.url = gw.url
        self.key = key

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key is not None else {}

    async def raw(self, method: str, path: str, body: bytes | None = None,
                  headers: dict | None = None) -> tuple[int, Any]:
        hdrs = {**self.headers(), "Content-Type": "application/json", **(headers or {})}
        async with self.http.request(method, self.url + path, data=body, headers=hdrs,
                                     timeout=aiohttp.ClientTimeout(total=T * 2)) as r:
            text = await r.read()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def post(self, op: str, body: Any) -> tuple[int, Any]:
        return await self.raw("POST", f"/api/{op}", json.dumps(body).encode())

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.raw("GET", path)

    async def __call__(self, op: str, **fields) -> dict:
        status, body = await self.post(op, fields)
        assert status == 200, (op, fields, status, body)
        return body["result"]

    async def stats(self) -> dict:
        status, body = await self.get("/api/stats")
        assert status == 200, body
        return body["result"]


async def health(http: aiohttp.ClientSession, gw) -> dict:
    async with http.get(gw.url + "/sockway/health", timeout=aiohttp.ClientTimeout(total=T)) as r:
        assert r.status == 200
        return await r.json()


class ZmqWorker:
    """A PULL socket connected to the gateway's event PUSH socket."""

    def __init__(self, address: str, ctx: zmq.asyncio.Context | None = None) -> None:
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.seen: list[dict] = []

    async def event(self, timeout: float = T, match: Callable[[dict], bool] | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self.sock.poll(int(remaining * 1000)):
                raise TimeoutError(f"no matching event within {timeout}s; saw {self.seen[-5:]}")
            event = json.loads(await self.sock.recv())
            self.seen.append(event)
            if match is None or match(event):
                return event

    async def events_of(self, conn: str, count: int, timeout: float = T) -> list[dict]:
        return [await self.event(timeout, lambda e: e.get("conn") == conn) for _ in range(count)]

    def close(self) -> None:
        self.sock.close(linger=0)


# -- tokens ---------------------------------------------------------------------------------

SECRET = "a-test-secret-long-enough-for-hs256-hs384-and-hs512-0123456789abcdef"


class Tokens:
    """JWTs for the tests: HS256 with :data:`SECRET`, RS256 with a key pair generated
    here (the public half written to ``public_pem``, for ``[auth] jwt_public_key``)."""

    def __init__(self, directory) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_bytes = public
        self.public_pem = os.path.join(str(directory), "jwt-public.pem")
        with open(self.public_pem, "wb") as f:
            f.write(public)

    @staticmethod
    def claims(sub: str | None = "alice", ttl: float = 300, **extra) -> dict:
        claims: dict = {"exp": int(time.time() + ttl), **extra}
        if sub is not None:
            claims["sub"] = sub
        return claims

    def hs(self, sub: str | None = "alice", ttl: float = 300, secret: str = SECRET,
           algorithm: str = "HS256", **extra) -> str:
        import jwt

        return jwt.encode(self.claims(sub, ttl, **extra), secret, algorithm=algorithm)

    def rs(self, sub: str | None = "alice", ttl: float = 300, key=None, **extra) -> str:
        import jwt

        return jwt.encode(self.claims(sub, ttl, **extra), key or self.private_key, algorithm="RS256")
