"""Fan-out to 1,000 subscribers with one that stops reading: the slow one is closed
(4008) within bounded time, every other subscriber receives every publication in
order, and the gateway's memory stays bounded.

The 1,000 clients live in the test process as plain asyncio protocols that speak just
enough RFC 6455 (the handshake, unmasked server frames, masked client frames); the
``websockets`` client would cost far more per connection. The slow client is a raw
socket with a 4 KiB receive buffer and Ethernet-sized segments that reads the subscribe
reply and then nothing."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import aiohttp
import pytest

from realtime import KEY, Api, eventually, rss_kib, run
from support import config_gateway

CLIENTS = 1000
MESSAGES = 600
SIZE = 1024
MSS = 1460
"""The slow client's TCP segment size, as on Ethernet. Loopback's 64 KiB segments make
the kernel grow the gateway's send buffer to about 3 MB for a client that does not
read; with Ethernet-sized segments it stays under a hundred KiB, as in production."""
RATE = 200  # publications per second
MAX_BUFFER = 65536


@pytest.fixture(scope="module")
def gw():
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 2

[api]
key = "{KEY}"

[[endpoint]]
prefix = "/ch"
mode = "channels"
max_buffer = {MAX_BUFFER}
heartbeat_delay = 60

[[endpoint]]
prefix = "/bc"
mode = "broadcast"
max_buffer = {MAX_BUFFER}
heartbeat_delay = 60
"""
    with config_gateway(config) as proc:
        yield proc


def _handshake(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def _client_frame(text: str) -> bytes:
    """A masked text frame (zero mask key: valid, and the payload goes as is)."""
    payload = text.encode()
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


class LiteClient(asyncio.Protocol):
    """Counts publications and checks their order from the ``offset`` (channels) or
    the leading sequence number (broadcast) without decoding the JSON."""

    def __init__(self, envelope: bool) -> None:
        self.envelope = envelope
        self.buf = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.control: list[bytes] = []
        self.received = 0
        self.last = -1
        self.disorder = 0
        self.close_code: int | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("lost before ready"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(bytes(buf[:100])))
                return
            del buf[:end + 4]
            self.open = True
            if not self.envelope and not self.ready.done():
                self.ready.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if size - pos < head + length:
                break
            opcode = buf[pos] & 0x0F
            start = pos + head
            if opcode in (1, 2):
                self._message(buf, start, length)
            elif opcode == 8:
                self.close_code = int.from_bytes(buf[start:start + 2], "big") if length >= 2 else 1005
            pos = start + length
        del buf[:pos]

    def _message(self, buf: bytearray, start: int, length: int) -> None:
        if self.envelope:
            if buf.startswith(b'{"type":"message"', start):
                i = buf.find(b'"offset":', start, start + 100) + 9
                seq = int(buf[i:buf.find(b",", i)])
            else:
                self.control.append(bytes(buf[start:start + length]))
                if b'"type":"reply"' in self.control[-1] and not self.ready.done():
                    self.ready.set_result(None)
                return
        else:
            seq = int(buf[start:start + 8])
        if seq != self.last + 1 and self.last >= 0:
            self.disorder += 1
        self.last = seq
        self.received += 1


async def _connect_all(gw, path: str, envelope: bool, count: int) -> list[LiteClient]:
    loop = asyncio.get_running_loop()

    async def one() -> LiteClient:
        _, client = await loop.create_connection(lambda: LiteClient(envelope), "127.0.0.1", gw.port)
        client.transport.write(_handshake(gw.port, path))
        if envelope:
            client.transport.write(_client_frame('{"op":"subscribe","channel":"fan","id":1}'))
        await asyncio.wait_for(client.ready, 20)
        return client

    clients: list[LiteClient] = []
    for start in range(0, count, 100):
        clients += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return clients


def _slow_client(gw, path: str, envelope: bool) -> socket.socket:
    """A client that reads its handshake (and subscribe reply), then never again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(_handshake(gw.port, path))
    if envelope:
        sock.sendall(_client_frame('{"op":"subscribe","channel":"fan","id":1}'))
    sock.settimeout(10)
    got = b""
    while b'"type":"reply"' not in got if envelope else b"\r\n\r\n" not in got:
        got += sock.recv(4096)
    return sock


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["channels", "broadcast"])
@run(timeout=150)
async def test_thousand_subscribers_and_a_slow_one(gw, mode):
    envelope = mode == "channels"
    path, prefix = ("/ch/websocket", "/ch") if envelope else ("/bc/websocket", "/bc")
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        stats = await api.stats()
        slow_before = stats["slow_consumers"]
        clients = await _connect_all(gw, path, envelope, CLIENTS)
        slow = _slow_client(gw, path, envelope)
        await eventually(lambda: _connections(api, prefix, CLIENTS + 1), timeout=10)
        rss_before = rss_kib(gw.proc.pid)
        filler = "x" * (SIZE - 40)
        loop = asyncio.get_running_loop()
        started = loop.time()
        slow_closed_at = None
        rss_peak = rss_before
        batch = 10
        for first in range(0, MESSAGES, batch):
            if envelope:
                commands = [{"op": "publish", "channel": "fan", "data": f"{i:08d} {filler}"}
                            for i in range(first, first + batch)]
            else:
                commands = [{"op": "broadcast", "endpoint": "/bc", "data": f"{i:08d} {filler}"}
                            for i in range(first, first + batch)]
            status, body = await api.post("commands", commands)
            assert status == 200 and all("result" in r for r in body["results"]), body
            rss_peak = max(rss_peak, rss_kib(gw.proc.pid))
            if slow_closed_at is None and (await api.stats())["slow_consumers"] > slow_before:
                slow_closed_at = loop.time()
            # Steady rate, and never more than a second ahead of the readers.
            await asyncio.sleep(max(0.0, started + (first + batch) / RATE - loop.time()))
        elapsed = loop.time() - started

        def everyone_has_everything() -> bool:
            return all(c.received >= MESSAGES for c in clients)

        await eventually(everyone_has_everything, timeout=30)
        # Every one of the 1,000 got every message, in order, and is still connected.
        assert {c.received for c in clients} == {MESSAGES}
        assert sum(c.disorder for c in clients) == 0
        assert not any(c.lost or c.close_code for c in clients)
        # The slow one was closed, well before the end, and is gone.
        assert slow_closed_at is not None, "the slow consumer was never closed"
        assert slow_closed_at - started < elapsed / 2
        await eventually(lambda: _connections(api, prefix, CLIENTS), timeout=5)
        # What the slow one can still read: what the kernels held for it, a fraction,
        # then the reset. The 4008 close frame waits behind the bytes it never read, so
        # it never reaches it: the socket is aborted (docs/endpoints.md).
        tail, ended = _tail(slow, 5.0)
        assert ended, "the slow consumer's connection was not ended"
        assert len(tail) < MESSAGES * SIZE / 2
        assert _last_close_code(tail) is None
        rss_after = rss_kib(gw.proc.pid)
        print(f"{mode}: {MESSAGES} x {SIZE} B to {CLIENTS} clients in {elapsed:.1f}s; slow one closed "
              f"after {slow_closed_at - started:.2f}s having got {len(tail)} B more; RSS {rss_before} -> "
              f"peak {rss_peak} -> {rss_after} KiB")
        # Bounded: at most max_buffer per client could wait in the gateway (64 MiB for
        # all of them); in fact the readers keep up and it barely moves.
        assert rss_peak - rss_before < 64 * 1024, (rss_before, rss_peak)
        for c in clients:
            c.transport.close()
        slow.close()
        await eventually(lambda: _connections(api, prefix, 0), timeout=10)


async def _connections(api: Api, prefix: str, expected: int) -> bool:
    return (await api.stats())["endpoints"][prefix]["connections"] == expected


def _tail(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What ``sock`` can still read, and whether the connection then ended (a reset
    or the end of the stream) within ``timeout`` seconds."""
    data = b""
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return data, False
    return data, True


def _last_close_code(data: bytes) -> int | None:
    """The code of the close frame that ends ``data``, if one does."""
    for length in range(2, 126):
        head = len(data) - length - 2
        if head >= 0 and data[head] == 0x88 and data[head + 1] == length:
            return int.from_bytes(data[head + 2:head + 4], "big")
    return None

