"""hixie-76 framing (draft-ietf-hybi-thewebsocketprotocol-00 section 4.2), property
based, through a running gateway: text frames (0x00, UTF-8, 0xFF) carrying SockJS
payloads, sent in pieces cut anywhere, reach the echo endpoint whole and in order, with
empty frames ignored; the closing frame (0xFF 0x00) ends the connection. A fresh
connection per example, on the shared WebSocket gateway, whose log is checked after
each."""

from __future__ import annotations

import json
import os
import socket
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import hixie_connect

T = 5.0
MESSAGES = st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
                    min_size=1, max_size=3)


def frame(payload: bytes) -> bytes:
    return b"\x00" + payload + b"\xff"


def read_messages(sock: socket.socket, count: int) -> list[str]:
    """The messages of the next ``a[...]`` frames, until ``count`` of them came
    (heartbeats skipped); nothing may follow them."""
    messages: list[str] = []
    buffer = b""
    deadline = time.monotonic() + T
    while len(messages) < count:
        while b"\xff" not in buffer:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            assert data, f"connection ended after {messages}"
            buffer += data
        head, _, buffer = buffer.partition(b"\xff")
        assert head.startswith(b"\x00a"), head
        messages += json.loads(head[2:])
    assert buffer == b"", buffer
    return messages


@settings(max_examples=60, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(MESSAGES, min_size=1, max_size=4), empty=st.booleans(), data=st.data())
def test_frames_cut_anywhere_arrive_whole(wsgw, batches, empty, data):
    stream = b"".join(frame(json.dumps(batch).encode()) for batch in batches)
    if empty:
        stream = frame(b"") + stream  # an empty frame is ignored
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=5))))
    sock = hixie_connect(wsgw.port, f"/echo/000/{os.urandom(4).hex()}/websocket")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            sock.sendall(stream[a:b])
        expected = [message for batch in batches for message in batch]
        assert read_messages(sock, len(expected)) == expected
        # The closing frame: the gateway ends the connection without another byte.
        sock.sendall(b"\xff\x00")
        sock.settimeout(T)
        assert sock.recv(65536) == b""
    finally:
        sock.close()
    log = wsgw.output()
    assert "Traceback" not in log and " ERROR " not in log, log
