"""SockJS over a legacy hixie-76 WebSocket is held to the endpoint's limits like RFC 6455:
a frame that never ends (hixie-76 frames carry no length) or is too long closes the
session with ``c[1009,...]`` instead of growing the receive buffer, and a client that
stops reading is closed as a slow consumer (4008) while the others get everything."""

from __future__ import annotations

import json
import os
import urllib.request

from websockets.sync.client import connect
from wsraw import rss_kib

from support import config_gateway, drain, endpoint_connections, hixie_connect, wait_for

CONFIG = """
[server]
sweep_interval = 0.2

[[endpoint]]
prefix = "/bc"
mode = "broadcast"
max_message_size = 4096
max_buffer = 65536
"""

T = 5.0
def connections(gw) -> int:
    return endpoint_connections(gw, "/bc")


def session_path() -> str:
    return f"/bc/000/{os.urandom(4).hex()}/websocket"


def test_messages_within_the_limit_are_delivered():
    with config_gateway(CONFIG) as gw, connect(gw.ws_url + "/bc/websocket", open_timeout=T) as other:
        sock = hixie_connect(gw.port, session_path())
        sock.sendall(b"\x00" + json.dumps(["x" * 4000]).encode() + b"\xff")
        assert other.recv(timeout=T) == "x" * 4000
        sock.close()


def test_a_frame_that_never_ends_is_refused():
    """0x00 then 1 MiB with no 0xFF: the session is closed with c[1009,...] once the
    limit (4 KiB) is passed, and the process did not buffer the rest."""
    with config_gateway(CONFIG) as gw:
        rss_before = rss_kib(gw.proc.pid)
        sock = hixie_connect(gw.port, session_path())
        try:
            sock.sendall(b"\x00" + b"a" * 8192)
            with_close = drain(sock, T)
            assert b'\x00c[1009,"Message too big"]\xff' in with_close, with_close
            assert with_close.endswith(b"\xff\x00")  # the hixie-76 closing frame
            try:
                for _ in range(64):
                    sock.sendall(b"a" * 16384)
            except OSError:
                pass  # the server has gone: what it should do
        finally:
            sock.close()
        assert wait_for(lambda: connections(gw) == 0, T)
        assert rss_kib(gw.proc.pid) - rss_before < 8 * 1024


def test_a_complete_frame_over_the_limit_is_refused():
    with config_gateway(CONFIG) as gw, connect(gw.ws_url + "/bc/websocket", open_timeout=T) as other:
        sock = hixie_connect(gw.port, session_path())
        try:
            sock.sendall(b"\x00" + json.dumps(["y" * 5000]).encode() + b"\xff")
            assert b'c[1009,"Message too big"]' in drain(sock, T)
        finally:
            sock.close()
        # Nothing of it reached the other client.
        other.send("ping")
        assert other.recv(timeout=T) == "ping"


def test_a_hixie_client_that_stops_reading_is_a_slow_consumer():
    """A hixie-76 client with a 4 KiB receive buffer that never reads, on a broadcast
    endpoint with max_buffer 64 KiB: 16 MB are broadcast; it is closed and removed, a
    raw RFC 6455 client gets every message in order. What the slow client can still
    read afterwards is what the kernel's socket buffers held (a few MB on loopback)."""
    with config_gateway(CONFIG) as gw:
        slow = hixie_connect(gw.port, session_path(), rcvbuf=4096)
        with connect(gw.ws_url + "/bc/websocket", open_timeout=T, max_size=None) as fast:
            assert wait_for(lambda: connections(gw) == 2, T)
            count = 4096
            for start in range(0, count, 16):
                for i in range(start, start + 16):
                    fast.send(f"{i:08d}" + "z" * 4000)
                for i in range(start, start + 16):
                    got = fast.recv(timeout=T)
                    assert got.startswith(f"{i:08d}"), (i, got[:20])
            assert wait_for(lambda: connections(gw) == 1, T), "the slow hixie-76 client is still connected"
        tail = drain(slow, 3.0)
        slow.close()
        assert len(tail) < count * 4000 / 3, len(tail)
        assert f'"{count - 1:08d}'.encode() not in tail
        with urllib.request.urlopen(gw.url + "/metrics", timeout=T) as r:
            metrics = r.read().decode()
        assert any(line.startswith("sockway_slow_consumer") and not line.endswith(" 0.0")
                   for line in metrics.splitlines()), [m for m in metrics.splitlines() if "slow" in m]
