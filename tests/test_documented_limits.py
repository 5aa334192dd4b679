"""Two limits of docs/endpoints.md "Limits on every endpoint", on a running gateway:

* ``max_session_queue``: a SockJS session with no request attached whose queue would
  go over the limit is closed with 4009; the messages queued before still come first,
  then ``c[4009,"session queue full"]``, and the endpoint's other clients get
  everything.
* an endpoint's ``max_connections``: past it, a new connection gets HTTP 503 "Too many
  connections" on every transport (raw WebSocket, SockJS WebSocket, a new SockJS HTTP
  session, a hixie-76 handshake); connected clients go on, other endpoints still
  accept, and a place that frees up is taken again.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.request

import aiohttp
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from realtime import T, run
from support import HIXIE_KEY1, HIXIE_KEY2, config_gateway, endpoint_connections, wait_for

QUEUE_LIMIT = 1000

CONFIG = f"""
[server]
sweep_interval = 0.2

[[endpoint]]
prefix = "/room"
mode = "broadcast"
max_session_queue = {QUEUE_LIMIT}

[[endpoint]]
prefix = "/lim"
mode = "echo"
max_connections = 2

[[endpoint]]
prefix = "/free"
mode = "echo"
"""

TOO_MANY = "Too many connections; try again later.\n"


@pytest.fixture(scope="module")
def gw():
    with config_gateway(CONFIG) as proc:
        yield proc


def metric(gw, name: str) -> float:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=T) as r:
        families = text_string_to_metric_families(r.read().decode())
        return sum(s.value for f in families for s in f.samples if s.name == name)


async def poll(http: aiohttp.ClientSession, session_url: str) -> str:
    async with http.post(session_url + "/xhr", timeout=aiohttp.ClientTimeout(total=T)) as r:
        assert r.status == 200
        return (await r.text()).rstrip("\n")


@run(30)
async def test_session_queue_overflow_closes_with_4009(gw):
    messages = [f"{i:02d} " + "x" * 97 for i in range(20)]
    # What the queue holds: each message's SockJS JSON string and its separator.
    sizes = [len(json.dumps(m)) + 1 for m in messages]
    fit = next(n for n in range(len(sizes) + 1) if sum(sizes[:n + 1]) > QUEUE_LIMIT)
    assert 0 < fit < len(messages)
    before = await asyncio.to_thread(metric, gw, "sockway_slow_consumer_closes_total")
    async with aiohttp.ClientSession() as http:
        session = f"{gw.url}/room/000/{os.urandom(6).hex()}"
        assert await poll(http, session) == "o"  # then no request is attached
        async with websockets.connect(gw.ws_url + "/room/websocket", open_timeout=T) as speaker:
            for message in messages:
                await speaker.send(message)
            assert [await asyncio.wait_for(speaker.recv(), T) for _ in messages] == messages
        assert await poll(http, session) == "a" + json.dumps(messages[:fit], separators=(",", ":"))
        closed = 'c[4009,"session queue full"]'
        assert await poll(http, session) == closed
        assert await poll(http, session) == closed  # until the session expires
    assert await asyncio.to_thread(metric, gw, "sockway_slow_consumer_closes_total") == before + 1


@run(30)
async def test_session_queue_overflow_with_a_request_attached(gw):
    """A stream is attached, but 20 messages come in one event-loop iteration (one
    SockJS send of 20 messages into the broadcast endpoint): they all wait in the queue
    until the stream's next write, which is over the limit: 4009 there too, after what
    fit, and the stream ends."""
    messages = [f"{i:02d} " + "y" * 97 for i in range(20)]
    sizes = [len(json.dumps(m)) + 1 for m in messages]
    fit = next(n for n in range(len(sizes) + 1) if sum(sizes[:n + 1]) > QUEUE_LIMIT)
    async with aiohttp.ClientSession() as http:
        stream = await http.post(f"{gw.url}/room/000/{os.urandom(6).hex()}/xhr_streaming",
                                 timeout=aiohttp.ClientTimeout(total=T))
        received = b""
        while not received.endswith(b"o\n"):
            received += await asyncio.wait_for(stream.content.readany(), T)
        sender = f"{gw.url}/room/000/{os.urandom(6).hex()}"
        assert await poll(http, sender) == "o"
        async with http.post(sender + "/xhr_send", data=json.dumps(messages)) as r:
            assert r.status == 204
        while chunk := await asyncio.wait_for(stream.content.readany(), T):
            received += chunk
        stream.close()
    frames = received.split(b"\n")[1:]  # after the prelude
    assert frames == [b"o", b"a" + json.dumps(messages[:fit], separators=(",", ":")).encode(),
                      b'c[4009,"session queue full"]', b""]


# -- max_connections on an endpoint ------------------------------------------------------------

async def ws_status(url: str) -> tuple[int, str]:
    try:
        async with websockets.connect(url, open_timeout=T):
            return 101, ""
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.body.decode()


def hixie_status(port: int, path: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=T) as sock:
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
                      f"Upgrade: WebSocket\r\nSec-WebSocket-Key1: {HIXIE_KEY1}\r\n"
                      f"Sec-WebSocket-Key2: {HIXIE_KEY2}\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return status, ""
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += sock.recv(4096)
        return status, body.decode()


@run(30)
async def test_endpoint_max_connections_gives_503(gw):
    before = await asyncio.to_thread(metric, gw, "sockway_rejected_connections_total")
    async with aiohttp.ClientSession() as http:
        held = await websockets.connect(gw.ws_url + "/lim/websocket", open_timeout=T)
        session = f"{gw.url}/lim/000/{os.urandom(6).hex()}"
        assert await poll(http, session) == "o"
        assert await asyncio.to_thread(wait_for, lambda: endpoint_connections(gw, "/lim") == 2, T)

        refused = (503, TOO_MANY)
        assert await ws_status(gw.ws_url + "/lim/websocket") == refused
        assert await ws_status(f"{gw.ws_url}/lim/000/{os.urandom(6).hex()}/websocket") == refused
        async with http.post(f"{gw.url}/lim/000/{os.urandom(6).hex()}/xhr") as r:
            assert (r.status, await r.text()) == refused
        hixie = f"/lim/000/{os.urandom(6).hex()}/websocket"
        assert await asyncio.to_thread(hixie_status, gw.port, hixie) == refused
        assert await asyncio.to_thread(metric, gw, "sockway_rejected_connections_total") == before + 4

        # Connected clients go on; other endpoints still accept.
        await held.send("still here")
        assert await asyncio.wait_for(held.recv(), T) == "still here"
        async with http.post(session + "/xhr_send", data=json.dumps(["me too"])) as r:
            assert r.status == 204
        assert await poll(http, session) == 'a["me too"]'
        assert await ws_status(gw.ws_url + "/free/websocket") == (101, "")

        # A place that frees up is taken again.
        await held.close()
        assert await asyncio.to_thread(wait_for, lambda: endpoint_connections(gw, "/lim") == 1, T)
        assert await ws_status(gw.ws_url + "/lim/websocket") == (101, "")
