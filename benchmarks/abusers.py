"""The abusers of the abuse scenario (benchmarks/abuse.py): hostile clients, one kind per
process, so that none of them slows the normal clients' generator or another abuser.

    python -m benchmarks.abusers '<JSON config>'

It prints ``{"ready": true}`` once its payloads are built, waits for a line ``go`` on
stdin, attacks until a line ``stop`` (or the end of stdin, or ``max_seconds``), then
closes every connection it holds and prints one JSON line: what it did and how the
gateway answered. Like a real attacker each abuser keeps at it: a connection the gateway
closes (or refuses) is opened again a second later, until ``stop``.

Kinds (``kind`` in the configuration; sizes in ``abuse.py``):

- ``silent``: TCP connections that send nothing, ``per_address`` of them from each of
  127.0.0.2, 127.0.0.3, ...;
- ``slow-heads``: a request head sent a byte a second, never finished (slowloris);
- ``slow-bodies``: a SockJS session opened (``xhr``), then an ``xhr_send`` whose body
  (within the declared ``Content-Length`` and the size limit) comes a byte a second;
- ``fragments``: a raw WebSocket text message under the size limit sent as 2-byte
  continuation frames (RFC 6455 section 5.4), never finished;
- ``history-flood``: publications of the largest data allowed (``[{},{},...]``, the most
  objects per byte of JSON) into channels that keep history;
- ``newline-flood``: bursts of newlines into the TCP tunnel;
- ``sockjs-churn``: SockJS sessions opened (``xhr``) and abandoned, on keep-alive
  connections;
- ``non-reader``: raw WebSocket clients that subscribe to the channel and the flooded
  ones, ask for the flooded history every second, and never read (a small receive
  buffer, reading paused).

Written by hand with asyncio streams, because no client library sends broken HTTP or
unfinished WebSocket messages on purpose; the frames come from ``publisher.masked``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from benchmarks.publisher import masked

__all__ = ["KINDS", "main"]

KINDS = ("silent", "slow-heads", "slow-bodies", "fragments", "history-flood", "newline-flood", "sockjs-churn",
         "non-reader")
ADDRESSES = {
    "silent": ("127.0.0.", 2), "slow-heads": ("127.0.3.", 1), "slow-bodies": ("127.0.4.", 1),
    "fragments": ("127.0.5.", 1), "history-flood": ("127.0.6.", 1), "newline-flood": ("127.0.7.", 1),
    "sockjs-churn": ("127.0.8.", 1), "non-reader": ("127.0.9.", 1),
}
"""Source addresses of each kind: its prefix and first host number."""
CONNECT_TIMEOUT = 10.0
RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 8.0


def log(text: str) -> None:
    print(f"  [abuser] {text}", file=sys.stderr, flush=True)


def flood_data(limit: int) -> str:
    """``[{},{},...]`` of at most ``limit`` bytes: the most objects a byte of JSON makes."""
    n = max(1, (limit - 1) // 3)  # n objects take 3n + 1 bytes
    return "[" + ",".join(["{}"] * n) + "]"


def slow_head() -> Iterator[bytes]:
    """A request head that never ends: a request line, then header after header."""
    yield from (bytes([b]) for b in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for n in range(1_000_000):
        yield from (bytes([b]) for b in b"X-Slow-%d: abcdefghij\r\n" % n)


class Abuser:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.kind: str = cfg["kind"]
        self.host: str = cfg["host"]
        self.port: int = cfg["port"]
        self.stopping = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.opened = 0
        self.connect_failed: Counter[str] = Counter()
        self.closed_by_gateway = 0
        self.bytes_sent = 0
        self.answers: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}
        self._connecting = asyncio.Semaphore(100)
        prefix, first = ADDRESSES[self.kind]
        self._prefix, self._first = prefix, first
        self._per_address = max(1, int(cfg.get("per_address", 100)))

    def address(self, slot: int) -> str:
        return f"{self._prefix}{self._first + slot // self._per_address}"

    # -- connections ------------------------------------------------------------------------

    async def connect(self, slot: int, port: int | None = None, rcvbuf: int | None = None,
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((self.address(slot), 0))
            async with self._connecting:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
                    sock, (self.host, port or self.port)), CONNECT_TIMEOUT)
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.connect_failed["timeout" if isinstance(exc, TimeoutError) else
                                (exc.strerror or type(exc).__name__)] += 1
            return None
        self.opened += 1
        self.writers.add(writer)
        return reader, writer

    def release(self, writer: asyncio.StreamWriter) -> None:
        self.writers.discard(writer)
        writer.close()

    def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.bytes_sent += len(data)

    def note_answer(self, data: bytes) -> None:
        """The first line the gateway sent before closing (a status line, or a few bytes)."""
        line = data.split(b"\r\n", 1)[0][:40].decode("latin-1") if data else "(nothing)"
        self.answers[line] += 1

    async def until_closed(self, reader: asyncio.StreamReader) -> bytes:
        """Reads (and drops) what the gateway sends until it closes; returns the start."""
        first = b""
        with contextlib.suppress(OSError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if len(first) < 64:
                    first += data[:64]
        return first

    async def ws_handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bool:
        key = base64.b64encode(os.urandom(16))
        self.send(writer, b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                  % (path.encode(), self.host.encode(), self.port, key))
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.note_answer(getattr(exc, "partial", b""))
            return False
        if not head.startswith(b"HTTP/1.1 101"):
            self.note_answer(head)
            return False
        return True

    async def keep_at_it(self, slots: int, attack: Callable[[int], Awaitable[None]]) -> None:
        """``slots`` attackers, each starting again a second after its connection ended;
        after one that lasted less than that (refused), it waits twice as long as the last
        time, up to ``MAX_RETRY_AFTER`` seconds: the abusers' own CPU is taken from the
        machine the gateway and the normal clients share."""

        async def slot(i: int) -> None:
            wait = RETRY_AFTER
            while not self.stopping:
                started = time.monotonic()
                try:
                    await attack(i)
                except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    self.errors[repr(exc)[:80]] += 1
                wait = RETRY_AFTER if time.monotonic() - started >= RETRY_AFTER else min(MAX_RETRY_AFTER, 2 * wait)
                await asyncio.sleep(wait)

        await asyncio.gather(*(slot(i) for i in range(slots)))

    # -- the kinds -------------------------------------------------------------------------------

    async def silent(self) -> None:
        async def attack(i: int) -> None:
            conn = await self.connect(i)
            if conn is None:
                return
            reader, writer = conn
            self.note_answer(await self.until_closed(reader))
            self.closed_by_gateway += not self.stopping
            self.release(writer)

        await self.keep_at_it(int(self.cfg["connections"]), attack)

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       data: Iterator[bytes]) -> None:
        """A byte a second from ``data`` until the gateway closes the connection."""
        closed = asyncio.ensure_future(self.until_closed(reader))
        try:
            for byte in data:
                self.send(writer, byte)
                done, _ = await asyncio.wait([closed], timeout=1.0)
                if done:
                    break
            self.note_answer(await closed)
            self.closed_by_gateway += not self.stopping
        finally:
            closed.cancel()
            self.release(writer)

    async def slow_heads(self) -> None:
        async def attack(i: int) -> None:
            conn = await self.connect(i)
            if conn is not None:
                await self._trickle(*conn, slow_head())

        await self.keep_at_it(int(self.cfg["connections"]), attack)

    async def slow_bodies(self) -> None:
        endpoint = self.cfg["sockjs_endpoint"].encode()
        length = int(self.cfg["body_length"])

        async def attack(i: int) -> None:
            conn = await self.connect(i)
            if conn is None:
                return
            reader, writer = conn
            session = os.urandom(8).hex().encode()
            self.send(writer, b"POST %s/000/%s/xhr HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n"
                      % (endpoint, session, self.host.encode()))
            try:
                status, _ = await asyncio.wait_for(read_response(reader), CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                self.note_answer(getattr(exc, "partial", b""))
                self.release(writer)
                return
            if status != 200:
                self.answers[f"xhr {status}"] += 1
                self.release(writer)
                return
            self.extra["sessions"] = self.extra.get("sessions", 0) + 1
            self.send(writer, b"POST %s/000/%s/xhr_send HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: %d\r\n\r\n" % (endpoint, session, self.host.encode(), length))
            body = (bytes([b]) for b in b'["' + b"a" * (length - 2))
            await self._trickle(reader, writer, body)

        await self.keep_at_it(int(self.cfg["connections"]), attack)

    async def fragments(self) -> None:
        size = int(self.cfg["message_bytes"])
        mask = os.urandom(4)
        payload = bytes([0x61 ^ mask[0], 0x61 ^ mask[1]])  # "aa", masked from offset 0 in every frame
        first = bytes([0x01, 0x82]) + mask + payload  # text, FIN clear (section 5.4)
        chunk = (bytes([0x00, 0x82]) + mask + payload) * 8192  # continuations, FIN clear
        frames = max(1, size // 2)
        path = self.cfg["echo_endpoint"] + "/websocket"

        async def attack(i: int) -> None:
            conn = await self.connect(i)
            if conn is None:
                return
            reader, writer = conn
            if not await self.ws_handshake(reader, writer, path):
                self.release(writer)
                return
            closed = asyncio.ensure_future(self.until_closed(reader))
            try:
                self.send(writer, first)
                sent = 1
                while sent < frames and not closed.done():
                    n = min(8192, frames - sent)
                    self.send(writer, chunk if n == 8192 else chunk[:8 * n])
                    sent += n
                    await writer.drain()
                self.extra["messages_sent"] = self.extra.get("messages_sent", 0) + (sent >= frames)
                self.note_answer(await closed)  # held: the message is never finished
                self.closed_by_gateway += not self.stopping
            except OSError:
                self.closed_by_gateway += not self.stopping
            finally:
                closed.cancel()
                self.release(writer)

        await self.keep_at_it(int(self.cfg["connections"]), attack)

    async def history_flood(self) -> None:
        data = flood_data(int(self.cfg["data_bytes"]))
        frames = [masked(json.dumps({"op": "publish", "channel": channel, "data": "DATA"}, separators=(",", ":"))
                         .replace('"DATA"', data).encode()) for channel in self.cfg["channels"]]
        self.extra["data_bytes"] = len(data)
        interval = 1.0 / float(self.cfg["rate"])
        path = self.cfg["channels_endpoint"] + "/websocket"
        published = 0

        async def attack(i: int) -> None:
            nonlocal published
            conn = await self.connect(i)
            if conn is None:
                return
            reader, writer = conn
            if not await self.ws_handshake(reader, writer, path):
                self.release(writer)
                return
            closed = asyncio.ensure_future(self.until_closed(reader))
            started = time.monotonic()
            try:
                n = 0
                while not closed.done():
                    self.send(writer, frames[published % len(frames)])
                    published += 1
                    self.extra["publications"] = published
                    await writer.drain()
                    n += 1
                    await asyncio.sleep(max(0.0, started + n * interval - time.monotonic()))
                self.note_answer(await closed)
                self.closed_by_gateway += not self.stopping
            except OSError:
                self.closed_by_gateway += not self.stopping
            finally:
                closed.cancel()
                self.release(writer)

        await self.keep_at_it(1, attack)

    async def newline_flood(self) -> None:
        burst = b"\n" * int(self.cfg["burst_bytes"])
        interval = float(self.cfg["interval"])

        async def attack(i: int) -> None:
            conn = await self.connect(i, port=int(self.cfg["tunnel_port"]))
            if conn is None:
                return
            reader, writer = conn
            closed = asyncio.ensure_future(self.until_closed(reader))
            try:
                while not closed.done():
                    self.send(writer, burst)
                    self.extra["bursts"] = self.extra.get("bursts", 0) + 1
                    await writer.drain()
                    await asyncio.wait([closed], timeout=interval)
                self.note_answer(await closed)
                self.closed_by_gateway += not self.stopping
            except OSError:
                self.closed_by_gateway += not self.stopping
            finally:
                closed.cancel()
                self.release(writer)

        await self.keep_at_it(1, attack)

    async def sockjs_churn(self) -> None:
        endpoint = self.cfg["sockjs_endpoint"].encode()
        workers = int(self.cfg["connections"])
        interval = workers / float(self.cfg["rate"])
        opened = 0

        async def attack(i: int) -> None:
            nonlocal opened
            conn = await self.connect(i)
            if conn is None:
                return
            reader, writer = conn
            started = time.monotonic()
            n = 0
            try:
                while not self.stopping:
                    session = os.urandom(8).hex().encode()
                    self.send(writer, b"POST %s/000/%s/xhr HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n"
                              % (endpoint, session, self.host.encode()))
                    status, _ = await asyncio.wait_for(read_response(reader), CONNECT_TIMEOUT)
                    if status == 200:
                        opened += 1
                        self.extra["sessions"] = opened
                    else:
                        self.answers[f"xhr {status}"] += 1
                    n += 1
                    await asyncio.sleep(max(0.0, started + n * interval - time.monotonic()))
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                self.closed_by_gateway += not self.stopping
                self.note_answer(getattr(exc, "partial", b""))
            finally:
                self.release(writer)

        await self.keep_at_it(workers, attack)

    async def non_reader(self) -> None:
        path = self.cfg["channels_endpoint"] + "/websocket"
        channels = [self.cfg["channel"], *self.cfg["flood_channels"]]

        async def attack(i: int) -> None:
            conn = await self.connect(i, rcvbuf=4096)
            if conn is None:
                return
            reader, writer = conn
            if not await self.ws_handshake(reader, writer, path):
                self.release(writer)
                return
            writer.transport.pause_reading()  # never read again
            try:
                for n, channel in enumerate(channels, 1):
                    self.send(writer, masked(json.dumps({"op": "subscribe", "channel": channel, "id": n}).encode()))
                n = 0
                while not self.stopping and not writer.transport.is_closing():
                    flooded = self.cfg["flood_channels"][n % len(self.cfg["flood_channels"])]
                    self.send(writer, masked(json.dumps({"op": "history", "channel": flooded, "limit": 100,
                                                         "id": 100 + n}).encode()))
                    n += 1
                    await asyncio.wait_for(writer.drain(), 5)
                    await asyncio.sleep(1.0)
                self.closed_by_gateway += not self.stopping
            except (OSError, TimeoutError):
                self.closed_by_gateway += not self.stopping
            finally:
                self.release(writer)

        await self.keep_at_it(int(self.cfg["connections"]), attack)

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        await getattr(self, self.kind.replace("-", "_"))()

    def close_all(self) -> None:
        self.stopping = True
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()

    def report(self, seconds: float) -> dict:
        return {"kind": self.kind, "ok": True, "seconds": round(seconds, 2), "opened": self.opened,
                "closed_by_gateway": self.closed_by_gateway, "connect_failed": dict(self.connect_failed),
                "bytes_sent": self.bytes_sent, "answers": dict(self.answers.most_common(8)),
                "errors": dict(self.errors.most_common(5)), **self.extra}


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: its status and body (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:60]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return int(parts[1]), await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                return int(parts[1]), body
    return int(parts[1]), b""


async def _main(cfg: dict) -> dict:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    abuser = Abuser(cfg)
    print(json.dumps({"ready": True, "kind": abuser.kind}), flush=True)
    while (line := await stdin.readline()) and line.strip() != b"go":
        pass
    if not line:
        return abuser.report(0.0)
    started = time.monotonic()
    task = asyncio.ensure_future(abuser.run())
    stop = asyncio.ensure_future(stdin.readline())  # "stop", or the end of stdin
    await asyncio.wait([task, stop], timeout=float(cfg.get("max_seconds", 900)),
                       return_when=asyncio.FIRST_COMPLETED)
    seconds = time.monotonic() - started
    abuser.close_all()
    task.cancel()
    stop.cancel()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    report = abuser.report(seconds)
    if isinstance(outcome, Exception):
        report |= {"ok": False, "error": repr(outcome)}
    await asyncio.sleep(0.2)  # the closes reach the gateway before this process exits
    return report


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
