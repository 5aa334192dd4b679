"""Encode once, write once per connection per event-loop iteration (docs/architecture.md
"Encode once, write once per iteration"), checked exactly through the counters a
running gateway exposes on /metrics (docs/observability.md): ``sockway_encodings_total``
and ``sockway_writes_total``.

One SockJS ``xhr_send`` carrying 1,000 messages into a broadcast endpoint makes 1,000
publications in one event-loop iteration (the send is decoded and delivered without an
await). Every client of the endpoint then gets all of them in ONE write, and each
message is encoded once per encoding present, whatever the number of recipients."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request

import aiohttp
import websockets
from prometheus_client.parser import text_string_to_metric_families

from realtime import T, run
from support import config_gateway, endpoint_connections, wait_for

CONFIG = """
[server]
sweep_interval = 0.2

[[endpoint]]
prefix = "/room"
mode = "broadcast"
"""

MESSAGES = [f"{i:04d} " + "x" * 195 for i in range(1000)]
"""200 characters each: over compress_threshold (128), so deflate clients get compressed
frames, and small enough that nobody nears max_buffer or max_session_queue."""

RAW, DEFLATE, SOCKJS_WS, STREAMS = 3, 3, 3, 2


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=T) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def read_raw(ws) -> list[str]:
    return [await asyncio.wait_for(ws.recv(), T) for _ in MESSAGES]


async def read_sockjs_ws(ws) -> list[str]:
    got: list[str] = []
    while len(got) < len(MESSAGES):
        frame = await asyncio.wait_for(ws.recv(), T)
        assert frame.startswith("a"), frame
        got.extend(json.loads(frame[1:]))
    return got


async def read_stream(response: aiohttp.ClientResponse) -> list[str]:
    """The messages of an xhr-streaming response (after its prelude and ``o``)."""
    buffer, got = b"", []
    while len(got) < len(MESSAGES):
        chunk = await asyncio.wait_for(response.content.readany(), T)
        assert chunk, f"the stream ended after {len(got)} messages"
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.startswith(b"a"):
                got.extend(json.loads(line[1:]))
            else:
                assert line in (b"o", b"h" * 2048), line[:40]
    return got


@run(60)
async def test_a_burst_is_encoded_once_and_written_once_per_connection():
    with config_gateway(CONFIG) as gw:
        base = gw.ws_url + "/room"
        raw = [await websockets.connect(base + "/websocket", compression=None, open_timeout=T,
                                        max_size=None, ping_interval=None) for _ in range(RAW)]
        deflate = [await websockets.connect(base + "/websocket", compression="deflate", open_timeout=T,
                                            max_size=None, ping_interval=None) for _ in range(DEFLATE)]
        assert all(ws.protocol.extensions for ws in deflate)
        sockjs_ws = []
        for _ in range(SOCKJS_WS):
            ws = await websockets.connect(f"{base}/000/{os.urandom(6).hex()}/websocket", compression=None,
                                          open_timeout=T, max_size=None, ping_interval=None)
            assert await asyncio.wait_for(ws.recv(), T) == "o"
            sockjs_ws.append(ws)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            streams = []
            for _ in range(STREAMS):
                response = await http.post(f"{gw.url}/room/000/{os.urandom(6).hex()}/xhr_streaming")
                assert response.status == 200
                streams.append(response)
            sender = f"{gw.url}/room/000/{os.urandom(6).hex()}"
            async with http.post(sender + "/xhr") as r:
                assert await r.text() == "o\n"
            clients = RAW + DEFLATE + SOCKJS_WS + STREAMS + 1
            assert await asyncio.to_thread(
                wait_for, lambda: endpoint_connections(gw, "/room") == clients, 10)
            # The streams have their prelude and open frame (written by their request,
            # not by the coalescer) before anything is counted.
            for response in streams:
                first = b""
                while not first.endswith(b"o\n"):
                    first += await asyncio.wait_for(response.content.readany(), T)

            before = await asyncio.to_thread(scrape, gw.url)
            async with http.post(sender + "/xhr_send", data=json.dumps(MESSAGES)) as r:
                assert r.status == 204
            received = await asyncio.gather(*(read_raw(ws) for ws in raw + deflate),
                                            *(read_sockjs_ws(ws) for ws in sockjs_ws),
                                            *(read_stream(response) for response in streams))
            after = await asyncio.to_thread(scrape, gw.url)
            for response in streams:
                response.close()
        for ws in raw + deflate + sockjs_ws:
            await ws.close()

    assert all(messages == MESSAGES for messages in received)
    count = len(MESSAGES)
    got = {name: delta(before, after, metric, **labels) for name, (metric, labels) in {
        "received": ("sockway_messages_received_total", {"endpoint": "/room"}),
        "deliveries": ("sockway_deliveries_total", {}),
        "websocket": ("sockway_encodings_total", {"encoding": "websocket"}),
        "websocket-deflate": ("sockway_encodings_total", {"encoding": "websocket-deflate"}),
        "sockjs": ("sockway_encodings_total", {"encoding": "sockjs"}),
        "sockjs-batch": ("sockway_encodings_total", {"encoding": "sockjs-batch"}),
        "writes": ("sockway_writes_total", {}),
    }.items()}
    assert got == {
        "received": count,
        # Every recipient is handed every message (the sender's own session included:
        # its messages wait in its queue, no request being attached)...
        "deliveries": count * clients,
        # ... each message encoded once per encoding present, not once per recipient ...
        "websocket": count,
        "websocket-deflate": count,
        "sockjs": count,
        # ... the SockJS WebSocket clients, whose queues hold the same messages, share
        # one a[...] frame ...
        "sockjs-batch": 1,
        # ... and each connection that was sent something got one write, not one per
        # message (the sender's session has no request attached: nothing to write).
        "writes": RAW + DEFLATE + SOCKJS_WS + STREAMS,
    }
