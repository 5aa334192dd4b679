"""The application in the bridge scenario: one process that publishes into a channel
through ZeroMQ (PUSH to ``[zeromq] pull``, PUB to ``[zeromq] sub``) or the HTTP API
(``/api/publish`` from a few keep-alive connections, or ``/api/commands`` batches).

    python -m benchmarks.publisher '<JSON config>'

It prints ``{"ready": true}`` on stdout once connected, waits for a line ``go`` on
stdin, publishes, and prints one JSON result line. Progress and errors go to stderr.

Each message's data is ``"<stream> <seq> <t> xxx..."`` (see gen/subscribers.js): the
stream is the connection that carried it (one for ZeroMQ, one per HTTP connection),
``t`` the microseconds of CLOCK_MONOTONIC at the send.

**Window.** Like the fan-out scenario's publisher, it keeps at most ``window`` messages
published but not yet received back: an *observer*, a raw WebSocket client subscribed to
the same channel, counts what comes back. Without it a ZeroMQ publisher would hand its
messages to its socket's queue at any speed and the measurement would be of that queue.
``window`` 0: no window (and no observer), as fast as the transport takes them.

**Phases.** First ``messages`` as fast as the window allows, then (after every one came
back and a short pause) ``paced_messages`` at ``paced_rate`` per second, each sent on
time whatever the previous one's fate (a request still in flight does not delay the
next: another connection carries it).

Cheap on purpose, so that it is not what limits the gateway: requests are formatted
bytes on keep-alive connections read by a small asyncio protocol (no HTTP library),
ZeroMQ sends are non-blocking, the observer only counts frames by their first bytes.
Its CPU time is measured and reported; ``benchmarks/sink.py`` measures its ceiling.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import sys
import time
from typing import Any

__all__ = ["main"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def now_us() -> int:
    return time.monotonic_ns() // 1000


def text_for(stream: int, seq: int, t: int, size: int) -> bytes:
    head = b"%d %d %d " % (stream, seq, t)
    return head + b"x" * max(0, size - len(head))


def log(text: str) -> None:
    print(f"  [publisher] {text}", file=sys.stderr, flush=True)


def masked(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame (RFC 6455 section 5.3); the mask is random, as it must be."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    body = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big") \
        if n else b""
    return head + mask + body


# -- the observer: counts the channel's publications as they come back --------------------


class Observer(asyncio.Protocol):
    def __init__(self, host: str, port: int, channel: str) -> None:
        self.host, self.port = host, port
        self.bench = b'{"type":"message","channel":"%s"' % channel.encode()
        self.probe = b'{"type":"message","channel":"probe"'
        self.buf = bytearray()
        self.open = False
        self.key = base64.b64encode(os.urandom(16))
        self.seen = 0
        self.probes = 0
        self.replies: dict[int, Any] = {}
        self.errors: list[str] = []
        self.progress = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(b"GET /ch/websocket HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"  # type: ignore[attr-defined]
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                        % (self.host.encode(), self.port, self.key))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("observer connection lost during the handshake"))
        self.progress.set()

    def send(self, obj: dict) -> None:
        assert self.transport is not None
        self.transport.write(masked(json.dumps(obj).encode()))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        p = 0
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
            if not head.startswith(b"HTTP/1.1 101") or accept not in head:
                self.handshake.set_exception(ConnectionError(f"observer handshake refused: {head[:80]!r}"))
                return
            self.open = True
            self.handshake.set_result(None)
            p = end + 4
        n = len(buf)
        seen = self.seen
        bench = self.bench
        while n - p >= 2:
            length = buf[p + 1] & 0x7F
            h = 2
            if length == 126:
                if n - p < 4:
                    break
                length = int.from_bytes(buf[p + 2:p + 4], "big")
                h = 4
            elif length == 127:
                if n - p < 10:
                    break
                length = int.from_bytes(buf[p + 2:p + 10], "big")
                h = 10
            start = p + h
            if n < start + length:
                break
            opcode = buf[p] & 0x0F
            if opcode == 1:
                if buf.startswith(bench, start):
                    seen += 1
                elif buf.startswith(self.probe, start):
                    self.probes += 1
                else:
                    self._other(bytes(buf[start:start + length]))
            elif opcode == 9 and self.transport is not None:
                self.transport.write(masked(bytes(buf[start:start + length]), 0xA))
            elif opcode == 8:
                self.errors.append("the gateway closed the observer")
            p = start + length
        del buf[:p]
        if seen != self.seen or self.probes:
            self.seen = seen
            self.progress.set()

    def _other(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            self.errors.append(f"unexpected frame {payload[:80]!r}")
            return
        if message.get("type") == "reply":
            self.replies[message.get("id")] = message
            self.progress.set()
        elif message.get("type") == "error":
            self.errors.append(json.dumps(message)[:200])

    async def until(self, predicate, timeout: float, what: str) -> None:
        """Wait for ``predicate``; fails when nothing comes back for ``timeout`` seconds
        (a slow gateway that keeps delivering is waited for)."""
        deadline = time.monotonic() + timeout
        seen = self.seen
        while not predicate():
            if self.closed:
                raise ConnectionError(f"observer connection lost waiting for {what}")
            if self.seen != seen:
                seen = self.seen
                deadline = time.monotonic() + timeout
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what}: nothing for {timeout:.0f}s")
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)

    async def subscribe(self, channel: str, request_id: int) -> None:
        self.send({"op": "subscribe", "channel": channel, "id": request_id})
        await self.until(lambda: request_id in self.replies, 10, f"subscribe reply for {channel}")
        reply = self.replies[request_id]
        if "result" not in reply:
            raise RuntimeError(f"subscribe to {channel} refused: {reply}")


# -- HTTP/1.1 keep-alive connection ---------------------------------------------------------


class HttpConnection(asyncio.Protocol):
    """One request at a time; the response is read by its Content-Length."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"HTTP connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(buf[:end]).lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            self.waiter.set_exception(RuntimeError(f"response without Content-Length: {head[:200]!r}"))
            return
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17:j if j > 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(buf[9:12])
        body = bytes(buf[end + 4:total])
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((status, body))

    async def request(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await asyncio.wait_for(self.waiter, timeout)


# -- the publisher ---------------------------------------------------------------------------


class Publisher:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.mode: str = cfg["mode"]  # zmq-push, zmq-pub, http, http-batch
        self.channel: str = cfg.get("channel", "bench")
        self.size: int = cfg.get("size", 64)
        self.M: int = cfg["messages"]
        self.L: int = cfg.get("paced_messages", 0)
        self.window: int = cfg.get("window", 100)
        self.observer: Observer | None = None
        self.zmq_socket = None
        self.conns: list[HttpConnection] = []
        self.free: asyncio.Queue[int] = asyncio.Queue()
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.first_error: str | None = None
        self.first_send = 0
        self.last_send = 0
        self.last_ack = 0
        self.window_wait = 0.0
        self.timeout: float = cfg.get("stall_timeout", 20)
        host, port = cfg["host"], cfg["port"]
        self.api_head = (f"POST /api/%s HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {cfg.get('key', '')}"
                         "\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n")

    # -- setup --

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        if self.window > 0 or self.mode == "zmq-pub":
            _, observer = await asyncio.wait_for(loop.create_connection(
                lambda: Observer(cfg["host"], cfg["port"], self.channel), cfg["host"], cfg["port"]), 10)
            self.observer = observer
            await asyncio.wait_for(observer.handshake, 10)
            await observer.subscribe(self.channel, 1)
        if self.mode.startswith("zmq"):
            import zmq

            context = zmq.Context.instance()
            sock = context.socket(zmq.PUSH if self.mode == "zmq-push" else zmq.PUB)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.setsockopt(zmq.SNDHWM, 1_000_000)
            sock.connect(cfg["zmq_address"])
            self.zmq_socket = sock
            if self.mode == "zmq-pub":
                await self._settle_pub()
        else:
            for i in range(max(1, cfg.get("http_clients", 4))):
                _, conn = await asyncio.wait_for(
                    loop.create_connection(HttpConnection, cfg["host"], cfg["port"]), 10)
                self.conns.append(conn)
                self.free.put_nowait(i)

    async def _settle_pub(self) -> None:
        """A PUB socket drops what it sends until the gateway's SUB has connected and its
        subscription has arrived (ZeroMQ's slow joiner): publish probes to another
        channel until one comes back through the observer."""
        assert self.observer is not None
        await self.observer.subscribe("probe", 2)
        started = time.monotonic()
        while self.observer.probes == 0:
            if time.monotonic() - started > 10:
                raise TimeoutError("no probe came through the PUB socket within 10s")
            self.zmq_socket.send(b'{"op":"publish","channel":"probe","data":"probe"}')
            await asyncio.sleep(0.05)
        log(f"PUB subscription settled after {time.monotonic() - started:.2f}s")

    # -- sending --

    def _command(self, stream: int, seq: int, t: int) -> bytes:
        return b'{"op":"publish","channel":"%s","data":"%s"}' % (self.channel.encode(),
                                                                 text_for(stream, seq, t, self.size))

    def _note_send(self, t: int) -> None:
        if not self.first_send:
            self.first_send = t
        self.last_send = t

    def _fail(self, text: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = text
            log(f"error: {text}")

    async def _room(self, needed: int = 1) -> None:
        """Wait until ``needed`` more messages fit in the window."""
        observer = self.observer
        if self.window <= 0 or observer is None:
            return
        if self.sent + needed - observer.seen <= self.window:
            return
        started = time.monotonic()
        await observer.until(lambda: self.sent + needed - observer.seen <= self.window, self.timeout,
                             f"the window ({observer.seen} of {self.sent} came back)")
        self.window_wait += time.monotonic() - started

    async def _http(self, conn: HttpConnection, route: bytes, body: bytes, count: int) -> None:
        raw = (self.api_head % (route.decode(), len(body))).encode() + body
        try:
            status, answer = await conn.request(raw, self.timeout)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            self._fail(f"{route.decode()}: {exc!r}")
            return
        if status != 200 or b'"error"' in answer:
            self._fail(f"{route.decode()}: {status} {answer[:200]!r}")
            return
        self.acked += count
        self.last_ack = now_us()

    async def phase_one(self) -> None:
        M = self.M
        if self.mode.startswith("zmq"):
            sock = self.zmq_socket
            for seq in range(M):
                await self._room()
                t = now_us()
                sock.send(self._command(0, seq, t))
                self._note_send(t)
                self.sent += 1
                if seq % 256 == 255:
                    await asyncio.sleep(0)  # let the observer read
            self.acked = M  # ZeroMQ has no acknowledgement: handed to the socket
            self.last_ack = self.last_send
            return
        batch = max(1, self.cfg.get("batch", 25)) if self.mode == "http-batch" else 1

        async def worker(stream: int) -> None:
            conn = self.conns[stream]
            while self.sent < M:
                take = min(batch, M - self.sent)
                await self._room(take)
                if self.sent >= M:
                    return
                take = min(take, M - self.sent)
                first = self.sent
                self.sent += take
                t = now_us()
                self._note_send(t)
                if batch == 1:
                    body = b'{"channel":"%s","data":"%s"}' % (self.channel.encode(),
                                                             text_for(stream, first, t, self.size))
                    await self._http(conn, b"publish", body, 1)
                else:
                    body = b"[" + b",".join(self._command(stream, s, t) for s in range(first, first + take)) + b"]"
                    await self._http(conn, b"commands", body, take)

        await asyncio.gather(*(worker(i) for i in range(len(self.conns))))

    async def phase_two(self) -> None:
        if self.L <= 0:
            return
        if self.observer is not None:
            await self.observer.until(lambda: self.observer.seen >= self.M, self.timeout,
                                      "the throughput phase to come back")
        await asyncio.sleep(self.cfg.get("gap", 0.3))
        interval = 1.0 / self.cfg.get("paced_rate", 50)
        started = time.monotonic()
        tasks = []
        for k in range(self.L):
            delay = started + k * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            seq = self.M + k
            if self.mode.startswith("zmq"):
                t = now_us()
                self.zmq_socket.send(self._command(0, seq, t))
                self.sent += 1
                self.acked += 1
            else:
                tasks.append(asyncio.ensure_future(self._paced_http(seq)))
        if tasks:
            await asyncio.gather(*tasks)

    async def _paced_http(self, seq: int) -> None:
        stream = await self.free.get()  # a connection with no request in flight
        try:
            t = now_us()
            self.sent += 1
            if self.mode == "http-batch":
                await self._http(self.conns[stream], b"commands", b"[" + self._command(stream, seq, t) + b"]", 1)
            else:
                body = b'{"channel":"%s","data":"%s"}' % (self.channel.encode(), text_for(stream, seq, t, self.size))
                await self._http(self.conns[stream], b"publish", body, 1)
        finally:
            self.free.put_nowait(stream)

    async def run(self) -> dict:
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        await self.phase_one()
        send_s = (self.last_send - self.first_send) / 1e6
        ack_s = (self.last_ack - self.first_send) / 1e6
        phase_one_wall = time.monotonic() - wall0
        phase_one_cpu = time.process_time() - cpu0
        await self.phase_two()
        if self.observer is not None and self.window > 0:
            try:
                await self.observer.until(lambda: self.observer.seen >= self.M + self.L, self.timeout,
                                          "the last messages to come back")
            except (TimeoutError, ConnectionError) as exc:
                self._fail(str(exc))
        return {
            "ok": self.errors == 0,
            "mode": self.mode,
            "published": self.sent,
            "acked": self.acked,
            "errors": self.errors,
            **({"error": self.first_error} if self.first_error else {}),
            "send_s": round(send_s, 4),
            "published_per_s": round(self.M / send_s) if send_s > 0 else None,
            "acked_per_s": round(self.M / ack_s) if ack_s > 0 else None,
            "window_wait_s": round(self.window_wait / max(1, len(self.conns) or 1), 4),
            "window_wait_share": round(self.window_wait / max(1, len(self.conns) or 1) / phase_one_wall, 3)
            if phase_one_wall > 0 else None,
            "phase1_cpu_util": round(phase_one_cpu / phase_one_wall, 3) if phase_one_wall > 0 else None,
            "cpu_s": round(time.process_time() - cpu0, 3),
            "wall_s": round(time.monotonic() - wall0, 3),
            "observer_seen": self.observer.seen if self.observer else None,
            "observer_errors": self.observer.errors[:3] if self.observer else None,
        }


async def _main(cfg: dict) -> dict:
    publisher = Publisher(cfg)
    try:
        await asyncio.wait_for(publisher.connect(), 30)
    except Exception as exc:
        return {"ok": False, "error": f"publisher could not connect: {exc!r}"}
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return {"ok": False, "error": "stdin closed before go"}
    try:
        return await publisher.run()
    except Exception as exc:  # reported, not raised: the runner wants a line
        return {"ok": False, "error": f"publisher failed: {exc!r}", "published": publisher.sent}


def main(argv: list[str] | None = None) -> int:
    cfg = json.loads((argv if argv is not None else sys.argv[1:])[0])
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    result = asyncio.run(_main(cfg))
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
