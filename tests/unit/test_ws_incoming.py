"""Incoming WebSocket data: any split of the bytes a client sends yields the same
messages (RFC 6455 section 5: framing, fragmentation, masking), and outgoing frames
encoded once decode to the original message, compressed or not (RFC 7692)."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.protocol import State
from websockets.server import ServerProtocol

from sockway.config import EndpointConfig
from sockway.edge.websocket import RawWebSocket
from sockway.hub.coalesce import Coalescer
from sockway.hub.message import OutMessage


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 section 5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


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
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.written += data

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
    def __init__(self, loop) -> None:
        self.hub = FakeHub(loop)
        self.config = EndpointConfig("/t")
        self.messages: list = []
        self.closes: list = []
        self.bytes_in = self.bytes_out = 0

    def opened(self, conn) -> None:
        pass

    def received(self, conn, data) -> None:
        self.messages.append(data)

    def closed(self, conn, code, reason) -> None:
        self.closes.append((code, reason))


def make_connection():
    loop = asyncio.new_event_loop()
    endpoint = FakeEndpoint(loop)
    transport = FakeTransport()
    ws = ServerProtocol(state=State.OPEN, max_size=1 << 20)
    conn = RawWebSocket(endpoint, ws, transport, Coalescer(loop), "test", None, 0, 1 << 20)
    conn.start()
    return loop, conn, transport, endpoint.messages


message = st.one_of(st.text(max_size=300), st.binary(max_size=300))


@settings(max_examples=150, deadline=None)
@given(
    batch=st.lists(st.tuples(message, st.integers(1, 4)), min_size=1, max_size=10),
    data=st.data(),
)
def test_any_split_yields_the_same_messages(batch, data):
    stream = b"".join(encode_message(m, k) for m, k in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    loop, conn, transport, received = make_connection()
    try:
        last = 0
        for cut in [*cuts, len(stream)]:
            if cut > last:
                conn.data_received(stream[last:cut])
            last = cut
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
