"""SockJS over a legacy hixie-76 WebSocket is held to the endpoint's limits like RFC 6455:
a frame that never ends (hixie-76 frames carry no length) or is too long closes the
session with ``c[1009,...]`` instead of growing the receive buffer, and a client that
stops reading is closed as a slow consumer (4008) while the others get everything."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import urllib.request

from websockets.sync.client import connect
from wsraw import rss_kib

from support import config_gateway, drain, endpoint_connections, wait_for

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
KEY1 = "4 @1  46546xW%0l 1 5"
KEY2 = "12998 5 Y3 1  .P00"
KEY3 = b"aaaaaaaa"


def answer(key1: str, key2: str, key3: bytes) -> bytes:
    """The 16-byte challenge answer (draft-hixie-thewebsocketprotocol-76 section 5.2),
    computed here independently of the server's code."""
    def number(key: str) -> int:
        return int("".join(c for c in key if c.isdigit())) // key.count(" ")
    return hashlib.md5(struct.pack(">II", number(key1), number(key2)) + key3).digest()


def hixie_connect(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A hixie-76 SockJS session, past the open frame."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(T)
    sock.connect(("127.0.0.1", port))
    origin = f"http://127.0.0.1:{port}"
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
                  f"Upgrade: WebSocket\r\nOrigin: {origin}\r\nSec-WebSocket-Key1: {KEY1}\r\n"
                  f"Sec-WebSocket-Key2: {KEY2}\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(KEY3)
    expected = answer(KEY1, KEY2, KEY3) + b"\x00o\xff"
    while len(rest) < len(expected):
        chunk = sock.recv(4096)
        assert chunk, rest
        rest += chunk
    assert rest[:len(expected)] == expected
    return sock


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
