"""Real WebSocket clients against the raw WebSocket edge: the ``websockets`` library
(sync API) and ``websocket-client``. Echo of text and binary (RFC 6455 section 5.6),
fragmented large messages (section 5.4), ordering, subprotocol negotiation (section
4.2.2 /subprotocol/), permessage-deflate negotiation and compressed broadcast to
clients with different windows (RFC 7692 sections 7.1 and 7.2)."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import threading

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect
from wsraw import BINARY, TEXT, RawWS, client_frame, deflate_message, inflate_message

import websocket as wsclient

T = 5  # seconds: every wait is bounded
DEFLATE = {"Sec-WebSocket-Extensions": "permessage-deflate"}


def ws_connect(gw, path, **kwargs):
    kwargs.setdefault("open_timeout", T)
    kwargs.setdefault("close_timeout", T)
    kwargs.setdefault("ping_interval", None)
    return connect(gw.ws_url + path, **kwargs)


def wsc_connect(gw, path, **kwargs):
    return wsclient.create_connection(gw.ws_url + path, timeout=T, **kwargs)


def extension_params(header: str | None) -> dict[str, str | None]:
    assert header, "no Sec-WebSocket-Extensions in the response"
    name, *params = [p.strip() for p in header.split(";")]
    assert name == "permessage-deflate"
    out: dict[str, str | None] = {}
    for param in params:
        key, _, value = param.partition("=")
        out[key.strip()] = value.strip().strip('"') or None
    return out


def repetitive(size: int, period: int, seed: int = 1) -> bytes:
    """Compressible data whose repeats are ``period`` bytes apart: a decoder with a
    window smaller than ``period`` cannot inflate it if it was compressed with a
    larger window."""
    rnd = random.Random(seed)
    block = bytes(rnd.getrandbits(8) for _ in range(period))
    return (block * (size // period + 1))[:size]


# -- echo ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None])
def test_websockets_echo_text_and_binary(wsgw, compression):
    with ws_connect(wsgw, "/echo/websocket", compression=compression) as ws:
        ws.send("hello ☃ \U0001f600")
        assert ws.recv(timeout=T) == "hello ☃ \U0001f600"
        ws.send(b"\x00\xff binary \x80")
        assert ws.recv(timeout=T) == b"\x00\xff binary \x80"
        ws.send("")
        assert ws.recv(timeout=T) == ""
        ws.send(b"")
        assert ws.recv(timeout=T) == b""
        big_text = "x" * 5000  # compressible: goes back compressed when negotiated
        ws.send(big_text)
        assert ws.recv(timeout=T) == big_text


def test_websocket_client_echo_text_and_binary(wsgw):
    ws = wsc_connect(wsgw, "/echo/websocket")
    try:
        ws.send("hello ☃")
        assert ws.recv_data() == (wsclient.ABNF.OPCODE_TEXT, "hello ☃".encode())
        ws.send_binary(b"\x01\x02\xfe")
        assert ws.recv_data() == (wsclient.ABNF.OPCODE_BINARY, b"\x01\x02\xfe")
    finally:
        ws.close()


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("compression", ["deflate", None])
def test_websockets_large_fragmented_message(wsgw, binary, compression):
    size = 1_000_000
    if binary:
        message: str | bytes = os.urandom(size)
        chunks = [message[i:i + 65536] for i in range(0, size, 65536)]
    else:
        message = "".join(random.Random(3).choice("abcdé€\U0001f600") for _ in range(size // 3))
        chunks = [message[i:i + 20000] for i in range(0, len(message), 20000)]
    with ws_connect(wsgw, "/echo/websocket", compression=compression, max_size=8 << 20) as ws:
        ws.send(iter(chunks))  # one fragment per chunk
        assert ws.recv(timeout=T) == message
        ws.send(message)  # the same in one frame
        assert ws.recv(timeout=T) == message


def test_websocket_client_large_fragmented_message(wsgw):
    message = os.urandom(1 << 20)
    text = ("ünïcödé " * 140_000).encode()
    ws = wsc_connect(wsgw, "/echo/websocket")
    try:
        for opcode, data in ((wsclient.ABNF.OPCODE_BINARY, message), (wsclient.ABNF.OPCODE_TEXT, text)):
            # Split at odd offsets, through multi-byte characters for the text.
            cuts = [0, 1, 7919, 300_001, 700_003, len(data)]
            pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
            for i, piece in enumerate(pieces):
                frame = wsclient.ABNF.create_frame(
                    piece, opcode if i == 0 else wsclient.ABNF.OPCODE_CONT, fin=int(i == len(pieces) - 1))
                ws.send_frame(frame)
            assert ws.recv_data() == (opcode, data)
    finally:
        ws.close()


def test_many_messages_in_order(wsgw):
    count = 3000
    with ws_connect(wsgw, "/echo/websocket") as ws:
        received: list = []

        def reader() -> None:
            for _ in range(count):
                received.append(ws.recv(timeout=T))

        thread = threading.Thread(target=reader)
        thread.start()
        for i in range(count):
            ws.send(f"message {i}" if i % 2 else f"message {i}".encode())
        thread.join(3 * T)
        assert not thread.is_alive()
    assert received == [f"message {i}" if i % 2 else f"message {i}".encode() for i in range(count)]


def test_many_messages_in_order_websocket_client(wsgw):
    ws = wsc_connect(wsgw, "/echo/websocket")
    try:
        for i in range(500):
            ws.send(f"m{i}")
        assert [ws.recv() for _ in range(500)] == [f"m{i}" for i in range(500)]
    finally:
        ws.close()


# -- subprotocols -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["chat.v1", "chat.v2"], "chat.v2"),  # the server's preference wins
        (["chat.v2"], "chat.v2"),
        (["other", "chat.v1"], "chat.v1"),
        (["other"], None),  # nothing in common: no subprotocol, still connected
        (None, None),  # nothing offered
    ],
)
def test_subprotocol_negotiation(wsgw, offered, selected):
    with ws_connect(wsgw, "/proto/websocket", subprotocols=offered) as ws:
        assert ws.subprotocol == selected
        assert ws.response.headers.get("Sec-WebSocket-Protocol") == selected
        ws.send("ping")
        assert ws.recv(timeout=T) == "ping"


def test_subprotocol_websocket_client(wsgw):
    ws = wsc_connect(wsgw, "/proto/websocket", subprotocols=["chat.v1", "chat.v2"])
    try:
        assert ws.getsubprotocol() == "chat.v2"
        ws.send("works")
        assert ws.recv() == "works"
    finally:
        ws.close()
    # With nothing in common the server answers 101 without the header (see
    # test_subprotocol_negotiation); websocket-client then gives up on its own.
    with pytest.raises(wsclient.WebSocketException, match="Invalid WebSocket Header"):
        wsc_connect(wsgw, "/proto/websocket", subprotocols=["nope"])


def test_no_subprotocol_on_endpoint_without_any(wsgw):
    with ws_connect(wsgw, "/echo/websocket", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol is None


# -- permessage-deflate -------------------------------------------------------------------


def test_deflate_negotiated_without_context_takeover(wsgw):
    with ws_connect(wsgw, "/echo/websocket") as ws:  # websockets offers permessage-deflate
        params = extension_params(ws.response.headers.get("Sec-WebSocket-Extensions"))
        assert "server_no_context_takeover" in params
        assert "client_no_context_takeover" in params
        data = "compress me " * 1000
        ws.send(data)
        assert ws.recv(timeout=T) == data
    with RawWS(wsgw.port, "/echo/websocket",
               headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}) as raw:
        assert raw.status == 101
        params = extension_params(raw.header("Sec-WebSocket-Extensions"))
        assert "server_no_context_takeover" in params and "client_no_context_takeover" in params


def test_deflate_not_negotiated_when_disabled(wsgw):
    with ws_connect(wsgw, "/nodeflate/websocket") as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        data = "compress me " * 1000
        ws.send(data)
        assert ws.recv(timeout=T) == data
    with RawWS(wsgw.port, "/nodeflate/websocket",
               headers={"Sec-WebSocket-Extensions": "permessage-deflate"}) as raw:
        assert raw.status == 101 and raw.header("Sec-WebSocket-Extensions") is None
        raw.send(TEXT, b"a" * 1000)
        frame = raw.recv_frame()
        assert (frame.opcode, frame.rsv1, frame.payload) == (TEXT, False, b"a" * 1000)


def test_deflate_not_offered_means_plain_frames(wsgw):
    with RawWS(wsgw.port, "/echo/websocket") as raw:
        assert raw.header("Sec-WebSocket-Extensions") is None
        raw.send(TEXT, b"b" * 5000)
        frame = raw.recv_frame()
        assert (frame.opcode, frame.rsv1, frame.payload) == (TEXT, False, b"b" * 5000)


def test_compressed_broadcast_to_clients_with_different_windows(wsgw):
    """One broadcast is compressed once per window size present; each client inflates
    it with its own window. Repeats 3000 bytes apart make a 9- or 10-bit decoder fail
    if it were handed data compressed with a larger window."""
    def deflate_ext(bits):
        return [ClientPerMessageDeflateFactory(server_max_window_bits=bits)]

    text = repetitive(60_000, 3000).hex()  # 120 kB of text, compressible
    binary = repetitive(50_000, 3000, seed=2)
    with contextlib.ExitStack() as stack:
        ws_clients = [stack.enter_context(ws) for ws in (
            ws_connect(wsgw, "/bcast/websocket"),  # default offer: 15 bits
            ws_connect(wsgw, "/bcast/websocket", compression=None, extensions=deflate_ext(10)),
            ws_connect(wsgw, "/bcast/websocket", compression=None, extensions=deflate_ext(9)),
            ws_connect(wsgw, "/bcast/websocket", compression=None),  # no compression
        )]
        raws = [stack.enter_context(raw) for raw in (
            RawWS(wsgw.port, "/bcast/websocket",
                  headers={"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=10"}),
            RawWS(wsgw.port, "/bcast/websocket", headers=DEFLATE),
        )]
        plain = wsc_connect(wsgw, "/bcast/websocket")  # websocket-client: no permessage-deflate
        stack.callback(plain.close)

        windows = [extension_params(ws.response.headers.get("Sec-WebSocket-Extensions"))
                   .get("server_max_window_bits") for ws in ws_clients[:3]]
        assert windows == [None, "10", "9"]
        assert ws_clients[3].response.headers.get("Sec-WebSocket-Extensions") is None
        assert [r.wbits for r in raws] == [10, 15]
        ws_clients[0].send(text)
        ws_clients[0].send(binary)
        ws_clients[0].send("short")
        for ws in ws_clients:
            assert ws.recv(timeout=T) == text
            assert ws.recv(timeout=T) == binary
            assert ws.recv(timeout=T) == "short"
        for raw in raws:
            for opcode, data in ((TEXT, text.encode()), (BINARY, binary)):
                frame = raw.recv_frame()
                assert frame.opcode == opcode and frame.rsv1 and frame.fin
                if raw.wbits == 15:  # the repeats are within the window
                    assert len(frame.payload) < len(data) // 4
                assert inflate_message(frame.payload, raw.wbits) == data
            frame = raw.recv_frame()
            assert (frame.opcode, frame.rsv1, frame.payload) == (TEXT, False, b"short")
        assert plain.recv_data() == (wsclient.ABNF.OPCODE_TEXT, text.encode())
        assert plain.recv_data() == (wsclient.ABNF.OPCODE_BINARY, binary)
        assert plain.recv_data() == (wsclient.ABNF.OPCODE_TEXT, b"short")


def test_server_window_limited_by_configuration(wsgw):
    """deflate_window_bits = 11: the server announces server_max_window_bits=11 and
    compresses within a 2 KiB window."""
    data = repetitive(40_000, 1500)
    with RawWS(wsgw.port, "/w11/websocket", headers=DEFLATE) as raw:
        params = extension_params(raw.header("Sec-WebSocket-Extensions"))
        assert params.get("server_max_window_bits") == "11"
        raw.send(BINARY, data)
        frame = raw.recv_frame()
        assert frame.rsv1 and len(frame.payload) < len(data) // 4
        assert inflate_message(frame.payload, 11) == data
    with ws_connect(wsgw, "/w11/websocket") as ws:
        ws.send(data)
        assert ws.recv(timeout=T) == data


def test_messages_below_threshold_are_not_compressed(wsgw):
    """compress_threshold (128 bytes by default): shorter messages go out with RSV1
    clear (RFC 7692 section 6: compression is per message and optional)."""
    with RawWS(wsgw.port, "/echo/websocket", headers=DEFLATE) as raw:
        assert raw.wbits == 15
        for size in (1, 50, 127):
            raw.send(TEXT, b"a" * size)
            frame = raw.recv_frame()
            assert (frame.opcode, frame.rsv1, frame.payload) == (TEXT, False, b"a" * size)
        raw.send(BINARY, b"\x00" * 127)
        frame = raw.recv_frame()
        assert (frame.opcode, frame.rsv1, frame.payload) == (BINARY, False, b"\x00" * 127)
        for size in (128, 4000):
            raw.send(TEXT, b"a" * size)
            frame = raw.recv_frame()
            assert frame.opcode == TEXT and frame.rsv1
            assert inflate_message(frame.payload) == b"a" * size


def test_compress_threshold_is_per_endpoint(wsgw):
    """/thr sets compress_threshold = 1000 (the first endpoint keeps the default): its
    raw and SockJS clients get messages under 1000 bytes uncompressed."""
    with RawWS(wsgw.port, "/thr/websocket", headers=DEFLATE) as raw:
        for size, compressed in ((999, False), (1000, True), (5000, True)):
            raw.send(TEXT, b"a" * size)
            frame = raw.recv_frame()
            assert frame.rsv1 is compressed, size
            assert (inflate_message(frame.payload) if compressed else frame.payload) == b"a" * size
    with RawWS(wsgw.port, "/thr/000/threshold/websocket", headers=DEFLATE) as raw:
        assert raw.recv_frame().payload == b"o"
        for size, compressed in ((900, False), (1000, True)):
            raw.send(TEXT, b'["' + b"a" * size + b'"]')
            frame = raw.recv_frame()
            assert frame.rsv1 is compressed, size
            payload = inflate_message(frame.payload) if compressed else frame.payload
            assert payload == b'a["' + b"a" * size + b'"]'


def test_sockjs_over_websocket_compression(wsgw):
    """SockJS frames over a permessage-deflate WebSocket: ``a[...]`` frames of 128
    bytes or more are compressed once per window size, shorter ones (``o``, ``h``,
    small batches) are not."""
    headers = [
        {"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=9"},
        DEFLATE,
        {},
    ]
    raws = [RawWS(wsgw.port, f"/bcast/000/deflate{i}/websocket", headers=h) for i, h in enumerate(headers)]
    try:
        assert [r.wbits for r in raws] == [9, 15, 0]
        for raw in raws:
            frame = raw.recv_frame()
            assert (frame.opcode, frame.rsv1, frame.payload) == (TEXT, False, b"o")
        text = repetitive(20_000, 3000).hex()
        raws[2].send(TEXT, ('["' + text + '"]').encode())
        for raw in raws:
            frame = raw.recv_frame()
            assert frame.opcode == TEXT and frame.rsv1 is bool(raw.wbits)
            payload = inflate_message(frame.payload, raw.wbits) if raw.wbits else frame.payload
            assert payload == ('a["' + text + '"]').encode()
        raws[2].send(TEXT, b'["tiny"]')
        for raw in raws:
            frame = raw.recv_frame()
            assert (frame.opcode, frame.rsv1, frame.payload) == (TEXT, False, b'a["tiny"]')
    finally:
        for raw in raws:
            raw.close()
    with ws_connect(wsgw, "/echo/000/deflate3/websocket") as ws:
        assert ws.recv(timeout=T) == "o"
        ws.send('["' + "x" * 3000 + '"]')
        assert ws.recv(timeout=T) == 'a["' + "x" * 3000 + '"]'


def test_compressed_client_messages(wsgw):
    """Client messages compressed by the client (RSV1 on the first frame only, section
    6.1), whole or fragmented, with or without the client keeping no context."""
    headers = {"Sec-WebSocket-Extensions": "permessage-deflate; client_no_context_takeover"}
    with RawWS(wsgw.port, "/echo/websocket", headers=headers) as raw:
        data = ("déjà vu " * 2000).encode()
        raw.send(TEXT, deflate_message(data), rsv1=True)
        assert raw.recv_message() == (TEXT, data)
        compressed = deflate_message(data)
        third = len(compressed) // 3
        raw.send_raw(client_frame(TEXT, compressed[:third], fin=False, rsv1=True)
                     + client_frame(0, compressed[third:2 * third], fin=False)
                     + client_frame(0, compressed[2 * third:]))
        assert raw.recv_message() == (TEXT, data)
        raw.send(BINARY, deflate_message(b""), rsv1=True)
        assert raw.recv_message() == (BINARY, b"")
        raw.send(BINARY, b"\x01\x02")  # RSV1 clear: not compressed, still allowed
        assert raw.recv_message() == (BINARY, b"\x01\x02")
