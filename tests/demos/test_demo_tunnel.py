"""The TCP tunnel of the demo without a browser: TCP clients talk to each other and to
channel subscribers through the channel, a line too long is refused, and a TCP client
that stops reading is disconnected instead of holding the gateway's memory."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from demo_support import DemoGateway, LineClient, T, demo_gateway
from websockets.sync.client import connect

from sockway.app import Client


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoGateway]:
    with demo_gateway() as running:
        yield running


def welcome(client: LineClient) -> None:
    assert client.line() == "* connected to channel 'tunnel'; type a line and press enter"


def test_two_tcp_clients_and_a_subscriber(demo: DemoGateway) -> None:
    a, b = LineClient(demo.tunnel_port), LineClient(demo.tunnel_port)
    try:
        welcome(a)
        welcome(b)
        with connect(demo.ws + "/live/websocket", open_timeout=T) as ws:
            assert json.loads(ws.recv(T))["type"] == "connected"
            ws.send(json.dumps({"op": "subscribe", "channel": "tunnel", "id": 1}))
            while json.loads(ws.recv(T)).get("type") != "reply":
                pass
            mark = uuid.uuid4().hex[:6]
            a.send_line(f"from a {mark}\r")  # telnet ends lines with CR LF
            expected = f"[tcp {a.local}] from a {mark}"
            assert b.until(lambda line: line == expected)
            assert a.until(lambda line: line == expected)
            while True:
                frame = json.loads(ws.recv(T))
                if frame.get("type") == "message":
                    break
            assert frame["data"] == {"from": f"tcp {a.local}", "text": f"from a {mark}"}
            # Publications that are not {"from", "text"}: strings as they are, the rest as JSON.
            api = Client(demo.url, demo.key)
            api.publish("tunnel", f"plain {mark}")
            api.publish("tunnel", {"n": [1, 2]})
            assert b.until(lambda line: mark in line) == f"plain {mark}"
            assert b.line() == '{"n":[1,2]}'
    finally:
        a.close()
        b.close()


def test_a_burst_is_written_as_one_block(demo: DemoGateway) -> None:
    """100 publications made in one request reach each TCP client in order, written
    through the hub's coalescer: a few writes per client, not one per line."""
    clients = [LineClient(demo.tunnel_port) for _ in range(2)]
    api = Client(demo.url, demo.key)
    try:
        for client in clients:
            welcome(client)
        mark = uuid.uuid4().hex[:6]
        before = api.stats()["coalescer"]["writes"]
        api.commands([{"op": "publish", "channel": "tunnel", "data": f"{mark} {n}"} for n in range(100)])
        for client in clients:
            assert client.until(lambda line: line.startswith(mark)) == f"{mark} 0"
            assert [client.line() for _ in range(99)] == [f"{mark} {n}" for n in range(1, 100)]
        writes = api.stats()["coalescer"]["writes"] - before
        assert 2 <= writes <= 10, writes
    finally:
        for client in clients:
            client.close()


def test_line_too_long(demo: DemoGateway) -> None:
    client = LineClient(demo.tunnel_port)
    try:
        welcome(client)
        client.sock.sendall(b"x" * 5000)  # no newline, over max_line (4096)
        assert client.until(lambda line: line.startswith("* closed")) == "* closed: line longer than 4096 bytes"
        with pytest.raises(ConnectionError):
            client.line()
    finally:
        client.close()


def test_slow_reader_is_disconnected(demo: DemoGateway) -> None:
    """A TCP client that reads nothing while megabytes are published: the gateway keeps
    at most max_buffer (1 MiB) for it, then drops it; the others go on."""
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the gateway's buffer fills
    slow.connect(("127.0.0.1", demo.tunnel_port))
    api = Client(demo.url, demo.key)
    slow_before = api.stats()["slow_consumers"]
    payload = "y" * 16_000
    published = 0
    try:
        for _ in range(40):  # 40 x 10 x 16 kB = 6.4 MB
            api.commands([{"op": "publish", "channel": "tunnel", "data": payload} for _ in range(10)])
            published += 10 * (len(payload) + 1)
        # Now read everything that was kept for it: much less than what was published,
        # then the end of the connection.
        slow.settimeout(T)
        received = 0
        deadline = time.monotonic() + 3 * T
        while time.monotonic() < deadline:
            try:
                data = slow.recv(1 << 16)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"still connected after receiving {received} of {published} bytes") from None
            if not data:
                break
            received += len(data)
        else:
            raise AssertionError("the slow client was never disconnected")
        assert received < published / 2, (received, published)
        assert api.stats()["slow_consumers"] == slow_before + 1  # counted like a WebSocket's 4008
    finally:
        slow.close()
    # The tunnel still serves others.
    fresh = LineClient(demo.tunnel_port)
    try:
        welcome(fresh)
        fresh.send_line("still here")
        assert fresh.until(lambda line: line.endswith("] still here"))
    finally:
        fresh.close()
