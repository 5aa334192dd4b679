"""Incoming WebSocket data: any split of the bytes a client sends yields the same
messages (RFC 6455 section 5: framing, fragmentation, masking), the fast path and the
``websockets`` protocol path answer every frame alike, fragments cost their size, and
outgoing frames encoded once decode to the original message, compressed or not (RFC
7692). No socket and no running event loop: bytes in, messages and bytes out."""

from __future__ import annotations

import asyncio
import os
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.protocol import State
from websockets.server import ServerProtocol

from sockway.config import EndpointConfig
from sockway.edge.websocket import RawWebSocket
from sockway.hub.coalesce import Coalescer
from sockway.hub.message import OutMessage
from sockway.ws.incoming import CLOSE, FEED, TOO_MANY_FRAGMENTS, FrameScanner, fragments_allowed

PROPERTY = settings(max_examples=200, deadline=None, print_blob=True)
"""Property tests print the failing example's blob (``@reproduce_failure``) to replay it."""


def raw_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True,
              length_bytes: int = 0, key: bytes | None = None) -> bytes:
    """One client frame (section 5.2), any bit pattern: ``rsv`` is the 3 RSV bits,
    ``length_bytes`` 2 or 8 forces a 16- or 64-bit length even for a short payload."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if length_bytes == 8 or n >= 65536:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    elif length_bytes == 2 or n >= 126:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | n])
    if not mask:
        return head + payload
    key = os.urandom(4) if key is None else key
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 section 5.2)."""
    return raw_frame(opcode, payload, fin=fin)


def encode_message(message: str | bytes, fragments: int) -> bytes:
    data = message.encode() if isinstance(message, str) else message
    opcode = 1 if isinstance(message, str) else 2
    if fragments <= 1 or len(data) < 2:
        return client_frame(opcode, data)
    size = max(1, len(data) // fragments)
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    out = client_frame(opcode, parts[0], fin=len(parts) == 1)
    for i, part in enumerate(parts[1:], start=2):
        out += client_frame(0, part, fin=i == len(parts))
    return out


class FakeTransport(asyncio.Transport):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.log = log

    def write(self, data) -> None:
        self.written += data
        self.log.append(("out", bytes(data)))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol


class FakeStats:
    slow_consumers = 0


class FakeHub:
    def __init__(self, loop) -> None:
        self.loop = loop
        self.stats = FakeStats()


class FakeEndpoint:
    def __init__(self, loop, log: list, echo: bool = False) -> None:
        self.hub = FakeHub(loop)
        self.config = EndpointConfig("/t")
        self.messages: list = []
        self.closes: list = []
        self.bytes_in = self.bytes_out = 0
        self.log = log
        self.echo = echo

    def opened(self, conn) -> None:
        pass

    def received(self, conn, data) -> None:
        self.messages.append(data)
        self.log.append(("message", data))
        if self.echo:
            conn.push(OutMessage(data).ws_frame(0))

    def closed(self, conn, code, reason) -> None:
        self.closes.append((code, reason))


def make_connection(*, fast: bool = True, deflate: bool = False, echo: bool = False,
                    max_size: int = 1 << 20):
    """A raw WebSocket connection on fakes: ``fast=False`` sends every frame through
    the ``websockets`` protocol; ``deflate`` negotiates permessage-deflate without
    context takeover (what sockway's handshake offers)."""
    loop = asyncio.new_event_loop()
    log: list = []
    endpoint = FakeEndpoint(loop, log, echo)
    transport = FakeTransport(log)
    ws = ServerProtocol(state=State.OPEN, max_size=max_size)
    if deflate:
        ws.extensions = [PerMessageDeflate(True, True, 15, 15)]
    conn = RawWebSocket(endpoint, ws, transport, Coalescer(loop), "test", None, 0, 1 << 20)
    conn._fast = fast and not deflate
    conn.start()
    return loop, conn, transport, endpoint.messages


def feed(conn, stream: bytes, cuts) -> None:
    """Give ``stream`` to the connection in pieces cut at ``cuts``; what it queued is
    flushed after each piece, as at the end of an event loop iteration."""
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        if cut > last:
            conn.data_received(stream[last:cut])
            conn._coalescer.flush_now()
        last = cut


message = st.one_of(st.text(max_size=300), st.binary(max_size=300))


@PROPERTY
@given(
    batch=st.lists(st.tuples(message, st.integers(1, 4)), min_size=1, max_size=10),
    data=st.data(),
)
def test_any_split_yields_the_same_messages(batch, data):
    stream = b"".join(encode_message(m, k) for m, k in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    loop, conn, transport, received = make_connection()
    try:
        feed(conn, stream, cuts)
        assert received == [m for m, _ in batch]
        assert not transport.closed
    finally:
        loop.close()


def test_invalid_utf8_across_fragments_closes_1007():
    loop, conn, transport, received = make_connection()
    try:
        bad = "é".encode()  # split the two bytes of one character, then corrupt
        conn.data_received(client_frame(1, b"ok " + bad[:1], fin=False))
        conn.data_received(client_frame(0, b"\xff", fin=True))
        assert received == []
        assert conn.close_code == 1007
        # The close frame sent to the client carries 1007.
        assert transport.written[0] == 0x88 and transport.written[2:4] == b"\x03\xef"
    finally:
        loop.close()


def inflate(payload: bytes, wbits: int = 15) -> bytes:
    return zlib.decompressobj(-wbits).decompress(payload + b"\x00\x00\xff\xff")


def parse_server_frame(frame: bytes) -> tuple[int, bool, bytes]:
    first, second = frame[0], frame[1]
    assert first & 0x80 and not second & 0x80  # FIN set, unmasked (RFC 6455 5.1)
    n, offset = second & 0x7F, 2
    if n == 126:
        n, offset = struct.unpack("!H", frame[2:4])[0], 4
    elif n == 127:
        n, offset = struct.unpack("!Q", frame[2:10])[0], 10
    assert len(frame) == offset + n
    return first & 0x0F, bool(first & 0x40), frame[offset:]


@given(message, st.sampled_from([0, 9, 10, 12, 15]))
def test_outgoing_frames_decode_to_the_message(data, wbits):
    msg = OutMessage(data)
    opcode, compressed, payload = parse_server_frame(msg.ws_frame(wbits))
    assert opcode == (1 if isinstance(data, str) else 2)
    raw = inflate(payload, wbits) if compressed else payload
    assert raw == (data.encode("utf-8", "replace") if isinstance(data, str) else data)
    assert compressed == (wbits != 0 and len(raw) >= 128)
    assert msg.ws_frame(wbits) is msg.ws_frame(wbits)  # encoded once


# -- parity: the fast path and the protocol path answer every frame alike --------------------

TEXTS = st.text(max_size=40).map(str.encode)
PAYLOADS = st.one_of(
    TEXTS,
    st.binary(max_size=40),
    st.sampled_from([b"\xff", b"ok \xc3", b"\xed\xa0\x80", b"a" * 125, b"b" * 126, b"c" * 300]),
)
RSV = st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2, 4, 7])
LENGTH_BYTES = st.sampled_from([0, 0, 0, 0, 2, 8])
MASKED = st.sampled_from([True] * 15 + [False])
CLOSE_PAYLOADS = st.one_of(
    st.just(b""),
    st.builds(lambda code, reason: struct.pack("!H", code) + reason,
              st.sampled_from([1000, 1001, 1002, 1005, 1011, 3000, 4999, 999, 5000]),
              st.sampled_from([b"", b"bye", b"\xff", b"r" * 124])),
    st.just(b"\x03"),
)


@st.composite
def frame_stream(draw) -> bytes:
    """Frames as a client may send them, mostly valid so that a stream goes on after
    its first frames: whole messages, fragmented ones with control frames in between,
    control frames, and frames with any RSV bits, opcode, length encoding or mask."""
    out = b""
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["message", "message", "fragmented", "control", "any"]))
        if kind == "message":
            out += raw_frame(draw(st.sampled_from([1, 2])), draw(PAYLOADS), length_bytes=draw(LENGTH_BYTES))
        elif kind == "fragmented":
            opcode = draw(st.sampled_from([1, 2]))
            parts = draw(st.lists(PAYLOADS, min_size=1, max_size=5))
            for i, part in enumerate(parts):
                out += raw_frame(opcode if i == 0 else 0, part, fin=i == len(parts) - 1,
                                 length_bytes=draw(LENGTH_BYTES))
                if draw(st.integers(0, 3)) == 0:
                    out += raw_frame(draw(st.sampled_from([9, 10])), draw(st.binary(max_size=10)))
                if draw(st.integers(0, 15)) == 0:
                    out += raw_frame(8, draw(CLOSE_PAYLOADS))
        elif kind == "control":
            opcode = draw(st.sampled_from([8, 9, 10]))
            payload = draw(CLOSE_PAYLOADS) if opcode == 8 else draw(st.binary(max_size=130))
            out += raw_frame(opcode, payload, fin=draw(st.sampled_from([True] * 9 + [False])))
        else:
            out += raw_frame(draw(st.integers(0, 15)), draw(PAYLOADS), fin=draw(st.booleans()),
                             rsv=draw(RSV), mask=draw(MASKED), length_bytes=draw(LENGTH_BYTES))
    return out


def run(stream: bytes, cuts, **kwargs) -> tuple[list, int | None, str, bool]:
    """Everything observable: messages dispatched and bytes written, in order; the close
    code and reason; whether the transport was closed."""
    loop, conn, transport, _ = make_connection(echo=True, max_size=1000, **kwargs)
    try:
        feed(conn, stream, cuts)
        return conn.endpoint.log, conn.close_code, conn.close_reason, transport.closed
    finally:
        loop.close()


@PROPERTY
@given(stream=frame_stream(), data=st.data())
def test_fast_path_and_protocol_path_agree(stream, data):
    """The same bytes, cut the same way, give the same messages, the same answers in
    the same order (pongs, echoes, close frames) and the same close, whether the fast
    path takes the frames it can or everything goes through the protocol."""
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    assert run(stream, cuts) == run(stream, cuts, fast=False)


@PROPERTY
@given(stream=frame_stream(), data=st.data())
def test_any_split_gives_the_same_outcome(stream, data):
    """Where reads end does not matter: the same messages, the same bytes written (in
    as many writes as there were reads, or fewer), the same close."""
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))

    def outcome(cuts):
        events, *close = run(stream, cuts)
        messages = [value for kind, value in events if kind == "message"]
        written = b"".join(value for kind, value in events if kind == "out")
        return messages, written, *close

    assert outcome([]) == outcome(cuts)


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


@PROPERTY
@given(
    messages=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=1, max_size=5),
    data=st.data(),
)
def test_compressed_fragments_split_anywhere(messages, data):
    """RFC 7692 section 6.1: a compressed message may be fragmented anywhere in its
    compressed bytes (RSV1 on the first frame only), and control frames may come
    between the fragments; the messages are those that were compressed."""
    stream = b""
    for message in messages:
        raw = message.encode() if isinstance(message, str) else message
        compressed = deflate(raw)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(compressed)), max_size=4)))
        parts = [compressed[a:b] for a, b in zip([0, *cuts], [*cuts, len(compressed)], strict=True)]
        for i, part in enumerate(parts):
            opcode = (1 if isinstance(message, str) else 2) if i == 0 else 0
            stream += raw_frame(opcode, part, fin=i == len(parts) - 1, rsv=4 if i == 0 else 0)
            if data.draw(st.booleans()):
                stream += raw_frame(9, b"p")
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    loop, conn, transport, received = make_connection(deflate=True)
    try:
        feed(conn, stream, cuts)
        assert received == messages
        assert conn.close_code is None and not transport.closed
    finally:
        loop.close()


# -- the frame scanner ---------------------------------------------------------------------


@PROPERTY
@given(stream=frame_stream(), data=st.data())
def test_scanner_gives_out_every_byte_once(stream, data):
    """What the scanner gives the protocol is the stream itself, cut after each control
    frame, except a close frame between fragments (given as its unmasked payload) and
    what follows a stop."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    scanner = FrameScanner()
    given_out = b""
    closes = []
    last = 0
    for cut in [*cuts, len(stream)]:
        for action, value in scanner.scan(stream[last:cut]):
            if action == FEED:
                assert value
                given_out += value
            else:
                closes.append((action, value))
        last = cut
    if not scanner.stopped:
        # Everything but an incomplete trailing header was given out.
        assert stream.startswith(given_out) and len(stream) - len(given_out) < 14
        assert not closes
    else:
        assert stream.startswith(given_out) and len(closes) == 1


def test_scanner_cuts_around_control_frames():
    ping, text = raw_frame(9, b"p"), raw_frame(1, b"hello")
    scanner = FrameScanner()
    assert scanner.scan(text + ping + text + text + ping + text) == [
        (FEED, text), (FEED, ping), (FEED, text + text), (FEED, ping), (FEED, text)]
    assert scanner.at_frame_start


def test_scanner_holds_back_an_incomplete_header():
    frame = raw_frame(2, b"x" * 300)  # 16-bit length: an 8-byte header with the mask key
    scanner = FrameScanner()
    assert scanner.scan(frame[:3]) == []
    assert not scanner.at_frame_start
    assert scanner.scan(frame[3:]) == [(FEED, frame)]
    assert scanner.at_frame_start


def test_scanner_takes_a_close_between_fragments():
    first, close = raw_frame(1, b"frag", fin=False), raw_frame(8, struct.pack("!H", 1000) + b"bye")
    scanner = FrameScanner()
    assert scanner.scan(first + close[:4]) == [(FEED, first)]
    assert scanner.scan(close[4:] + b"ignored") == [(CLOSE, struct.pack("!H", 1000) + b"bye")]
    assert scanner.stopped and scanner.scan(b"more") == []


def test_fragments_allowed():
    assert fragments_allowed(0) == 64
    assert fragments_allowed(64 * 1000) == 1064


@pytest.mark.parametrize("final", [False, True])
def test_scanner_stops_at_too_many_small_fragments(final):
    """1-byte fragments: 65 frames make 65 bytes, allowed (64 + 65 // 64); a 66th is not."""
    scanner = FrameScanner()
    frames = [raw_frame(1, b"a", fin=False)] + [raw_frame(0, b"b", fin=False)] * 64
    extra = raw_frame(0, b"c", fin=final)
    assert scanner.scan(b"".join(frames)) == [(FEED, b"".join(frames))]
    assert scanner.scan(extra + b"ignored") == [(TOO_MANY_FRAGMENTS, 66)]
    assert scanner.stopped and scanner.scan(b"more") == []


def test_scanner_lets_fragments_of_64_bytes_through():
    """Fragments of 64 bytes: as many as max_message_size allows (Autobahn case 9.3.1
    sends 4 MiB in 65,536 of them)."""
    scanner = FrameScanner()
    stream = raw_frame(2, b"x" * 64, fin=False) + raw_frame(0, b"y" * 64, fin=False) * 5000
    assert scanner.scan(stream) == [(FEED, stream)]
    assert not scanner.stopped


# -- fragments: limits and cost ------------------------------------------------------------


def test_small_fragments_beyond_64_close_1009():
    """64 frames of any size, then at least 64 bytes per frame on average: a message
    cut finer is closed with 1009 before the protocol parses the extra frame (65
    frames of one byte pass, 66 do not)."""
    loop, conn, transport, received = make_connection()
    try:
        conn.data_received(raw_frame(1, b"a", fin=False) + raw_frame(0, b"b", fin=False) * 63 + raw_frame(0, b"c"))
        assert received == ["a" + "b" * 63 + "c"]
        conn.data_received(raw_frame(2, b"a", fin=False) + raw_frame(0, b"b", fin=False) * 64
                           + raw_frame(0, b"c"))
        assert received == ["a" + "b" * 63 + "c"]
        assert (conn.close_code, conn.close_reason) == (1009, "message in too many small fragments")
        assert transport.written == b"\x88\x25\x03\xf1message in too many small fragments"
        assert transport.closed
    finally:
        loop.close()


def test_fragments_cost_their_size():
    """A fragmented message in progress is held in one buffer: 4,000 fragments of
    64 bytes cost about 256 KB, not an object per fragment (about 480 KB)."""
    loop, conn, _transport, received = make_connection()
    fragment = raw_frame(0, b"0123456789abcdef" * 4, fin=False, key=b"\x01\x02\x03\x04")
    stream = raw_frame(1, b"start", fin=False) + fragment * 4000
    try:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        conn.data_received(stream)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert conn.close_code is None and received == []
        assert grown < 1.25 * 64 * 4000 + 8192, f"{grown} bytes for 256,000 bytes of fragments"
    finally:
        loop.close()
