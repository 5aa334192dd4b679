"""Graceful shutdown on SIGTERM: every WebSocket client gets close 1001 (RFC 6455
section 7.4.1, "going away"); SockJS clients first get ``c[1001,"Server shutting
down"]``; the process exits 0 within shutdown_timeout, even when a client never
answers the close."""

from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wsraw import CLOSE, TEXT, RawWS, close_payload

from support import config_gateway

SHUTDOWN_TIMEOUT = 2.0
CONFIG = f"""
[server]
shutdown_timeout = {SHUTDOWN_TIMEOUT}

[[endpoint]]
prefix = "/sd"
mode = "echo"
"""
T = 5.0
SOCKJS_CLOSE = 'c[1001,"Server shutting down"]'


def connections(gw) -> int:
    with urllib.request.urlopen(gw.url + "/sockway/health", timeout=T) as r:
        return json.load(r)["connections"]


def wait_connections(gw, n: int) -> None:
    deadline = time.monotonic() + T
    while connections(gw) != n:
        assert time.monotonic() < deadline, f"expected {n} connections"
        time.sleep(0.05)


def sigterm_and_wait(gw) -> float:
    start = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    return start


def assert_exits_zero(gw, start: float) -> None:
    code = gw.proc.wait(SHUTDOWN_TIMEOUT + 3)
    elapsed = time.monotonic() - start
    assert code == 0, gw.output()
    assert elapsed < SHUTDOWN_TIMEOUT + 3


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_clients_get_1001_and_the_process_exits_0(compression):
    with config_gateway(CONFIG) as gw, contextlib.ExitStack() as stack:
        kw = {"open_timeout": T, "close_timeout": T, "ping_interval": None, "compression": compression}
        ws = stack.enter_context(connect(gw.ws_url + "/sd/websocket", **kw))
        sockjs = stack.enter_context(connect(gw.ws_url + "/sd/000/shutdown1/websocket", **kw))
        raw = stack.enter_context(RawWS(gw.port, "/sd/websocket"))
        raw_sockjs = stack.enter_context(RawWS(gw.port, "/sd/000/shutdown2/websocket"))
        assert sockjs.recv(timeout=T) == "o"
        assert raw_sockjs.recv_frame().payload == b"o"
        ws.send("before")
        assert ws.recv(timeout=T) == "before"
        wait_connections(gw, 4)

        start = sigterm_and_wait(gw)

        # websockets: close 1001 with the reason, handshake completed by the library.
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=T)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert info.value.rcvd.reason == "Server shutting down"
        # SockJS through websockets: the c frame, then the WebSocket close.
        assert sockjs.recv(timeout=T) == SOCKJS_CLOSE
        with pytest.raises(ConnectionClosed) as info:
            sockjs.recv(timeout=T)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        # Raw sockets: the exact frames, then the client completes the handshake.
        frame = raw.recv_frame()
        assert (frame.opcode, frame.close_code) == (CLOSE, 1001)
        raw.send(CLOSE, frame.payload)
        raw.expect_eof()
        frame = raw_sockjs.recv_frame()
        assert (frame.opcode, frame.payload) == (TEXT, SOCKJS_CLOSE.encode())
        frame = raw_sockjs.recv_frame()
        assert (frame.opcode, frame.close_code) == (CLOSE, 1001)
        raw_sockjs.send(CLOSE, close_payload(1001))
        raw_sockjs.expect_eof()

        assert_exits_zero(gw, start)


def test_exit_is_bounded_when_clients_never_answer():
    """Clients that neither answer the close nor read: the process still exits 0
    within shutdown_timeout and a margin."""
    with config_gateway(CONFIG) as gw, contextlib.ExitStack() as stack:
        raws = [stack.enter_context(RawWS(gw.port, "/sd/websocket", rcvbuf=4096)) for _ in range(3)]
        raws.append(stack.enter_context(RawWS(gw.port, "/sd/000/shutdown3/websocket")))
        wait_connections(gw, 4)
        start = sigterm_and_wait(gw)
        assert_exits_zero(gw, start)
        frame = raws[0].recv_frame()
        assert (frame.opcode, frame.close_code) == (CLOSE, 1001)
