"""The slow-consumer bound (max_buffer): a client that stops reading is closed with
4008 (then aborted) once more than max_buffer bytes wait for it, while the others
receive every message in order, and the gateway's memory stays bounded. Also for a
client that floods pings without reading the pongs."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest
from websockets.sync.client import connect
from wsraw import RawWS, rss_kib

import websocket as wsclient
from support import config_gateway, drain, endpoint_connections, wait_for

CONFIG = """
[server]
sweep_interval = 0.2

[[endpoint]]
prefix = "/bc"
mode = "broadcast"
max_buffer = 65536

[[endpoint]]
prefix = "/echo"
mode = "echo"
max_buffer = 65536
"""

T = 5.0
COUNT = 4000
SIZE = 4096  # 16 MB in all: what the slow client would cost if nothing bounded it


@pytest.fixture(scope="module")
def gw():
    with config_gateway(CONFIG) as proc:
        yield proc


def clients(gw, prefix: str) -> int:
    return endpoint_connections(gw, prefix)


def message(i: int) -> bytes:
    head = f"{i:08d}".encode()
    return head + os.urandom(SIZE - len(head))  # incompressible


def last_close_code(data: bytes) -> int | None:
    """The code of the close frame that ends ``data``, if one does (an aborted
    connection may end anywhere)."""
    for length in range(2, 126):
        head = len(data) - length - 2
        if head >= 0 and data[head] == 0x88 and data[head + 1] == length:
            return int.from_bytes(data[head + 2:head + 4], "big")
    return None


def test_slow_consumer_is_dropped_others_get_everything(gw):
    """Four clients keep up (three libraries and a raw socket; the publisher is one of
    them and waits for all of them to catch up every 16 messages, so none ever lags by
    more than 64 KiB); the fifth never reads, with a 4 KiB receive buffer."""
    received: dict[str, list[bytes]] = {}
    progress = threading.Condition()

    def read_with(name: str, recv) -> None:
        out = received[name] = []
        try:
            for _ in range(COUNT):
                data = recv()
                with progress:
                    out.append(data)
                    progress.notify_all()
        except Exception as exc:  # reported by the length check below
            with progress:
                out.append(repr(exc).encode())
                progress.notify_all()

    with contextlib.ExitStack() as stack:
        publisher = stack.enter_context(connect(gw.ws_url + "/bc/websocket", open_timeout=T,
                                                ping_interval=None, compression=None, max_size=None))
        fast_deflate = stack.enter_context(connect(gw.ws_url + "/bc/websocket", open_timeout=T,
                                                   ping_interval=None, max_size=None))
        fast_plain = wsclient.create_connection(gw.ws_url + "/bc/websocket", timeout=T)
        stack.callback(fast_plain.close)
        fast_raw = stack.enter_context(RawWS(gw.port, "/bc/websocket"))
        slow = stack.enter_context(RawWS(gw.port, "/bc/websocket", rcvbuf=4096))
        assert wait_for(lambda: clients(gw, "/bc") == 5, T)
        rss_before = rss_kib(gw.proc.pid)
        readers = {
            "publisher": lambda: publisher.recv(timeout=T),
            "deflate": lambda: fast_deflate.recv(timeout=T),
            "websocket-client": lambda: fast_plain.recv_data()[1],
            "raw": lambda: fast_raw.recv_message(timeout=T)[1],
        }
        threads = [threading.Thread(target=read_with, args=item, daemon=True) for item in readers.items()]
        for thread in threads:
            thread.start()
        start = time.monotonic()
        for i in range(COUNT):
            if i % 16 == 0:
                with progress:
                    caught_up = progress.wait_for(
                        lambda i=i: len(received) == len(readers)
                        and min(len(r) for r in received.values()) >= i, T)
                assert caught_up, {name: len(r) for name, r in received.items()}
            publisher.send(message(i))
        for thread in threads:
            thread.join(3 * T)
        elapsed = time.monotonic() - start
        assert not any(t.is_alive() for t in threads), "a fast reader did not get everything in time"
        for name, messages in received.items():
            assert len(messages) == COUNT, (name, len(messages), messages[-1][:200])
            assert [m[:8] for m in messages] == [f"{i:08d}".encode() for i in range(COUNT)], name
            assert all(len(m) == SIZE for m in messages), name
        # The slow client is gone (4008, then the abort a second later).
        assert wait_for(lambda: clients(gw, "/bc") == 4, 3.0), "the slow consumer is still connected"
        rss_after = rss_kib(gw.proc.pid)
        tail = bytes(slow.buf) + drain(slow.sock, 3.0)
        assert len(tail) < COUNT * SIZE / 4, len(tail)
        assert last_close_code(tail) in (None, 4008)
        growth = rss_after - rss_before
        print(f"{COUNT * SIZE >> 20} MiB to 4 clients in {elapsed:.1f}s; slow one got {len(tail)} bytes;"
              f" RSS {rss_before} -> {rss_after} KiB")
        assert growth < 12 * 1024, f"RSS grew by {growth} KiB while the slow client was connected"


def test_ping_flood_without_reading_is_bounded(gw):
    """A client that sends pings but never reads the pongs: the pongs are held to the
    same bound as data."""
    ping = bytes((0x89, 0x80 | 125)) + b"\0\0\0\0" + b"p" * 125  # a zero mask key is a valid mask
    flood = ping * 20_000  # 2.6 MB of pings, as many pongs in answer
    rss_before = rss_kib(gw.proc.pid)
    with RawWS(gw.port, "/echo/websocket", rcvbuf=4096) as raw:
        assert wait_for(lambda: clients(gw, "/echo") == 1, T)
        raw.sock.settimeout(T)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            for _ in range(8):
                raw.sock.sendall(flood)
        assert wait_for(lambda: clients(gw, "/echo") == 0, T), "the flooding client is still connected"
        rss_after = rss_kib(gw.proc.pid)
        tail = bytes(raw.buf) + drain(raw.sock, 3.0)
        assert len(tail) < 8 << 20
        assert last_close_code(tail) in (None, 4008)
        assert rss_after - rss_before < 12 * 1024, (rss_before, rss_after)
