"""Keepalive (RFC 6455 section 5.5.2: a ping "may serve either as a keepalive or as a
means to verify that the remote endpoint is still responsive"). The /keep endpoint
has heartbeat_delay = 1 and ping_timeout = 1; the server sweeps every 0.2 s. Raw
WebSocket clients get pings and are dropped when they do not answer; SockJS over
WebSocket gets ``h`` frames instead."""

from __future__ import annotations

import time

from websockets.sync.client import connect
from wsraw import CLOSE, PING, PONG, TEXT, RawWS

# heartbeat_delay + one sweep + scheduling margin
FIRST_PING_WITHIN = 1.0 + 0.2 + 1.3


def test_idle_client_is_pinged_and_stays_open_while_answering(wsgw):
    with RawWS(wsgw.port, "/keep/websocket") as raw:
        start = time.monotonic()
        pings = []
        while time.monotonic() - start < 2.8:
            frame = raw.recv_frame(timeout=FIRST_PING_WITHIN)
            assert frame.opcode == PING, frame
            pings.append(time.monotonic() - start)
            raw.send(PONG, frame.payload)
        assert len(pings) >= 2, pings
        assert pings[0] < FIRST_PING_WITHIN
        # Still open and serving after several rounds.
        raw.send(TEXT, b"still here")
        while True:
            frame = raw.recv_frame()
            if frame.opcode != PING:
                break
            raw.send(PONG, frame.payload)
        assert (frame.opcode, frame.payload) == (TEXT, b"still here")


def test_busy_client_is_not_pinged(wsgw):
    """Traffic from the client proves it is alive: no ping while it talks."""
    with RawWS(wsgw.port, "/keep/websocket") as raw:
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            raw.send(TEXT, b"tick")
            frame = raw.recv_frame()
            assert (frame.opcode, frame.payload) == (TEXT, b"tick")
            time.sleep(0.3)


def test_unresponsive_client_is_closed(wsgw):
    """A client that never answers: closed with 1011 (or the connection aborted)
    within heartbeat_delay + ping_timeout + sweeps."""
    with RawWS(wsgw.port, "/keep/websocket") as raw:
        start = time.monotonic()
        frame = raw.recv_frame(timeout=FIRST_PING_WITHIN)
        assert frame.opcode == PING
        try:
            while True:
                frame = raw.recv_frame(timeout=4)
                if frame.opcode == CLOSE:
                    assert frame.close_code == 1011, frame
                    raw.expect_eof(timeout=4)
                    break
                assert frame.opcode == PING, frame  # not answered either
        except (EOFError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - start
        assert elapsed < 1.0 + 1.0 + 0.4 + 2.0, elapsed


def test_sockjs_websocket_gets_heartbeat_frames(wsgw):
    with connect(wsgw.ws_url + "/keep/000/keepalive1/websocket", open_timeout=5,
                 ping_interval=None, compression=None) as ws:
        assert ws.recv(timeout=5) == "o"
        start = time.monotonic()
        assert ws.recv(timeout=FIRST_PING_WITHIN) == "h"
        assert ws.recv(timeout=FIRST_PING_WITHIN) == "h"
        assert time.monotonic() - start < 2 * FIRST_PING_WITHIN


def test_sockjs_websocket_heartbeats_are_text_frames_not_pings(wsgw):
    """A SockJS client that never answers WebSocket pings (there are none) stays
    connected: it only gets ``h`` frames."""
    with RawWS(wsgw.port, "/keep/000/keepalive2/websocket") as raw:
        frame = raw.recv_frame()
        assert (frame.opcode, frame.payload) == (TEXT, b"o")
        start = time.monotonic()
        heartbeats = 0
        while time.monotonic() - start < 2.8:
            frame = raw.recv_frame(timeout=FIRST_PING_WITHIN)
            assert (frame.opcode, frame.payload) == (TEXT, b"h"), frame
            heartbeats += 1
        assert heartbeats >= 2
        raw.send(TEXT, b'["still open"]')
        while (frame := raw.recv_frame()).payload == b"h":
            pass
        assert (frame.opcode, frame.payload) == (TEXT, b'a["still open"]')
