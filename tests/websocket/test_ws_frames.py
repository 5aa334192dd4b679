"""RFC 6455 framing at the byte level, with a raw socket client: malformed frames fail
the connection with 1002 (sections 5.2, 5.4, 5.5, 7.4.1), invalid UTF-8 with 1007
(section 8.1), messages over ``max_message_size`` with 1009 (section 7.4.1), including
permessage-deflate decompression bombs (RFC 7692 section 8.1); pings are answered
with the same payload (section 5.5.2); the closing handshake echoes the code (section
5.5.1) and invalid close codes are protocol errors (section 7.4.1)."""

from __future__ import annotations

import struct
import time

import pytest
from wsraw import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    RawWS,
    client_frame,
    close_payload,
    deflate_bomb,
    deflate_message,
    rss_kib,
)

from support import assert_clean_log, log_mark

DEFLATE = {"Sec-WebSocket-Extensions": "permessage-deflate"}


def echo(wsgw, path="/echo/websocket", **kwargs) -> RawWS:
    raw = RawWS(wsgw.port, path, **kwargs)
    assert raw.status == 101, raw.headers
    return raw


def still_serving(wsgw) -> None:
    with echo(wsgw) as raw:
        raw.send(TEXT, b"alive")
        assert raw.recv_message() == (TEXT, b"alive")


@pytest.fixture(autouse=True)
def serving_after(wsgw):
    """After each test, the gateway it threw frames at (not another worker's) still
    echoes, and logged no traceback or error meanwhile."""
    mark = log_mark(wsgw)
    yield
    still_serving(wsgw)
    assert_clean_log(wsgw, mark)


# -- protocol errors: 1002 ----------------------------------------------------------------


PROTOCOL_ERRORS = {
    "unmasked client frame": client_frame(TEXT, b"hello", mask=False),
    "RSV1 without extension": client_frame(TEXT, b"hello", rsv1=True),
    "RSV2": client_frame(TEXT, b"hello", rsv2=True),
    "RSV3": client_frame(BINARY, b"hello", rsv3=True),
    "RSV on a ping": client_frame(PING, b"x", rsv2=True),
    "reserved data opcode 0x3": client_frame(0x3, b"hello"),
    "reserved data opcode 0x7": client_frame(0x7, b""),
    "reserved control opcode 0xB": client_frame(0xB, b"x"),
    "reserved control opcode 0xF": client_frame(0xF, b""),
    "fragmented ping": client_frame(PING, b"x", fin=False) + client_frame(CONT, b"y"),
    "fragmented close": client_frame(CLOSE, close_payload(1000), fin=False),
    "ping over 125 bytes": client_frame(PING, b"p" * 126),
    "pong over 125 bytes": client_frame(PONG, b"p" * 200),
    "close over 125 bytes": client_frame(CLOSE, close_payload(1000, "r" * 124)),
    "continuation without start": client_frame(CONT, b"orphan"),
    "final continuation without start": client_frame(CONT, b"orphan", fin=False),
    "text inside a fragmented message": (
        client_frame(TEXT, b"part 1", fin=False) + client_frame(TEXT, b"part 2")),
    "binary inside a fragmented message": (
        client_frame(BINARY, b"part 1", fin=False) + client_frame(CONT, b"part 2", fin=False)
        + client_frame(BINARY, b"new")),
    "unmasked close inside a fragmented message": (
        client_frame(TEXT, b"part 1", fin=False) + client_frame(CLOSE, close_payload(1000), mask=False)),
    "RSV1 on a close inside a fragmented message": (
        client_frame(TEXT, b"part 1", fin=False) + client_frame(CLOSE, close_payload(1000), rsv1=True)),
    "close over 125 bytes inside a fragmented message": (
        client_frame(TEXT, b"part 1", fin=False) + client_frame(CLOSE, close_payload(1000, "r" * 124))),
    "invalid close code inside a fragmented message": (
        client_frame(TEXT, b"part 1", fin=False) + client_frame(CLOSE, close_payload(1005))),
    "close with a 1-byte payload": client_frame(CLOSE, b"\x03"),
}


@pytest.mark.parametrize("data", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_error_closes_1002(wsgw, data):
    with echo(wsgw) as raw:
        raw.send_raw(data)
        raw.expect_close(1002)


DEFLATE_PROTOCOL_ERRORS = {
    "RSV1 on a continuation": (
        client_frame(TEXT, deflate_message(b"x" * 50), fin=False, rsv1=True)
        + client_frame(CONT, b"", rsv1=True)),
    "RSV1 on a ping": client_frame(PING, b"x", rsv1=True),
    "RSV2 with deflate": client_frame(TEXT, deflate_message(b"abc"), rsv1=True, rsv2=True),
}


@pytest.mark.parametrize("data", DEFLATE_PROTOCOL_ERRORS.values(), ids=DEFLATE_PROTOCOL_ERRORS.keys())
def test_deflate_protocol_error_closes_1002(wsgw, data):
    with echo(wsgw, headers=DEFLATE) as raw:
        assert raw.wbits
        raw.send_raw(data)
        raw.expect_close(1002)


def test_corrupt_deflate_data_fails_the_connection(wsgw):
    with echo(wsgw, headers=DEFLATE) as raw:
        raw.send(BINARY, b"\xff\xff\xff\xff garbage", rsv1=True)
        raw.expect_close(1002)  # zlib cannot inflate it: "decompression failed"


def test_frames_before_the_error_are_processed(wsgw):
    with echo(wsgw) as raw:
        raw.send_raw(client_frame(TEXT, b"first") + client_frame(TEXT, b"bad", rsv3=True))
        assert raw.recv_message() == (TEXT, b"first")
        raw.expect_close(1002)


# -- UTF-8: 1007 ----------------------------------------------------------------------------


INVALID_UTF8 = {
    "invalid byte": [b"\xff"],
    "overlong slash": [b"a\xc0\xafb"],
    "surrogate": [b"\xed\xa0\x80"],
    "above U+10FFFF": [b"\xf4\x90\x80\x80"],
    "truncated at the end": [b"abc\xe2\x82"],
    "split, invalid continuation in the second fragment": [b"ab\xe2\x82", b"(cd"],
    "split, truncated in the last fragment": [b"ok", b"fine", b"\xf0\x9f\x98"],
    "split, bad byte in the middle fragment": [b"ok ", b"\x80", b" ok"],
}


@pytest.mark.parametrize("fragments", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
def test_invalid_utf8_closes_1007(wsgw, fragments):
    with echo(wsgw) as raw:
        for i, fragment in enumerate(fragments):
            raw.send(TEXT if i == 0 else CONT, fragment, fin=i == len(fragments) - 1)
        raw.expect_close(1007)


def test_invalid_utf8_fails_fast(wsgw):
    """Section 8.1: the connection fails as soon as the bytes cannot be UTF-8, without
    waiting for the end of a fragmented message."""
    with echo(wsgw) as raw:
        raw.send(TEXT, b"valid so far", fin=False)
        raw.send(CONT, b"then \xc3\x28 invalid", fin=False)
        raw.expect_close(1007)


def test_invalid_utf8_in_compressed_text(wsgw):
    with echo(wsgw, headers=DEFLATE) as raw:
        raw.send(TEXT, deflate_message(b"x" * 200 + b"\xfe"), rsv1=True)
        raw.expect_close(1007)


def test_invalid_utf8_in_close_reason(wsgw):
    with echo(wsgw) as raw:
        raw.send(CLOSE, struct.pack("!H", 1000) + b"\xff\xfe")
        raw.expect_close(1007)


def test_binary_is_not_checked_as_utf8(wsgw):
    with echo(wsgw) as raw:
        raw.send(BINARY, b"\xff\xfe\xc0\xaf")
        assert raw.recv_message() == (BINARY, b"\xff\xfe\xc0\xaf")


def test_valid_utf8_split_inside_characters(wsgw):
    text = "é€\U0001f600".encode()  # 2, 3 and 4 byte sequences
    with echo(wsgw) as raw:
        # Every cut, one byte per fragment: each boundary falls inside a character.
        for i, byte in enumerate(text):
            raw.send(TEXT if i == 0 else CONT, bytes([byte]), fin=i == len(text) - 1)
        assert raw.recv_message() == (TEXT, text)
        raw.send(TEXT, b"", fin=False)
        raw.send(CONT, b"", fin=False)
        raw.send(CONT, b"")
        assert raw.recv_message() == (TEXT, b"")


# -- size: 1009 -----------------------------------------------------------------------------


def test_message_at_the_limit_is_accepted(wsgw):
    with echo(wsgw, "/small/websocket") as raw:
        raw.send(BINARY, b"\x01" * 1024)
        assert raw.recv_message() == (BINARY, b"\x01" * 1024)
        raw.send(TEXT, b"a" * 500, fin=False)
        raw.send(CONT, b"b" * 524)
        assert raw.recv_message() == (TEXT, b"a" * 500 + b"b" * 524)


def test_message_over_the_limit_closes_1009(wsgw):
    with echo(wsgw, "/small/websocket") as raw:
        raw.send(BINARY, b"\x01" * 1025)
        raw.expect_close(1009)


def test_fragmented_message_over_the_limit_closes_1009(wsgw):
    with echo(wsgw, "/small/websocket") as raw:
        raw.send(TEXT, b"a" * 400, fin=False)
        raw.send(CONT, b"b" * 400, fin=False)
        raw.send(CONT, b"c" * 400)
        raw.expect_close(1009)


def test_huge_announced_length_closes_1009_at_once(wsgw):
    """The length in the header is enough: the server does not wait for (or buffer)
    a payload it will refuse."""
    with echo(wsgw, "/small/websocket") as raw:
        raw.send_raw(struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 62) + b"mask")
        raw.expect_close(1009)


def test_decompression_bomb_closes_1009(wsgw):
    """600 bytes on the wire, within the 1024-byte limit, inflating to 600 KiB."""
    bomb = deflate_message(b"\0" * 600_000)
    assert len(bomb) < 1024
    with echo(wsgw, "/small/websocket", headers=DEFLATE) as raw:
        raw.send(BINARY, bomb, rsv1=True)
        raw.expect_close(1009)


def test_fragmented_decompression_bomb_closes_1009(wsgw):
    bomb = deflate_message(b"\0" * 600_000)
    half = len(bomb) // 2
    with echo(wsgw, "/small/websocket", headers=DEFLATE) as raw:
        raw.send(BINARY, bomb[:half], rsv1=True, fin=False)
        raw.send(CONT, bomb[half:])
        raw.expect_close(1009)


def test_compressed_message_within_the_limit_is_accepted(wsgw):
    data = b"\0" * 1024
    with echo(wsgw, "/small/websocket", headers=DEFLATE) as raw:
        raw.send(BINARY, deflate_message(data), rsv1=True)
        assert raw.recv_message() == (BINARY, data)


def test_large_decompression_bomb_stops_at_the_cap(wsgw):
    """About 1 MB on the wire inflating to 1 GiB, against a 4 MiB limit: the server
    inflates at most the limit, answers 1009 quickly and its memory does not grow by
    anything near the inflated size."""
    bomb = deflate_bomb(1024)
    assert len(bomb) < 4 << 20
    before = rss_kib(wsgw.proc.pid)
    with echo(wsgw, "/echo/websocket", headers=DEFLATE) as raw:
        start = time.monotonic()
        raw.send(BINARY, bomb, rsv1=True)
        raw.expect_close(1009, timeout=5)
        elapsed = time.monotonic() - start
    after = rss_kib(wsgw.proc.pid)
    assert elapsed < 3, f"took {elapsed:.1f}s: the server inflated more than the cap"
    assert after - before < 64 * 1024, f"RSS grew from {before} to {after} KiB"
    still_serving(wsgw)


# -- ping and pong --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"abc", bytes(range(125))])
def test_ping_is_answered_with_the_same_payload(wsgw, payload):
    with echo(wsgw) as raw:
        raw.send(PING, payload)
        frame = raw.recv_frame()
        assert (frame.opcode, frame.fin, frame.payload) == (PONG, True, payload)


def test_ping_between_fragments(wsgw):
    """Section 5.4: control frames may be injected in the middle of a fragmented
    message; the message is still delivered whole."""
    with echo(wsgw) as raw:
        raw.send(TEXT, b"hel", fin=False)
        raw.send(PING, b"mid")
        raw.send(PONG, b"unsolicited")  # section 5.5.3: no answer expected
        raw.send(CONT, b"lo")
        frames = [raw.recv_frame() for _ in range(2)]
        assert [(f.opcode, f.payload) for f in frames] == [(PONG, b"mid"), (TEXT, b"hello")]


@pytest.mark.parametrize("headers", [{}, DEFLATE], ids=["plain", "deflate"])
def test_ping_between_fragments_in_one_segment_is_answered_first(wsgw, headers):
    """Section 5.5.2: the pong is sent at once, so it comes before the message whose
    last fragment follows the ping, even when all of it arrives in one read (Autobahn
    cases 5.6 to 5.20)."""
    with echo(wsgw, headers=headers) as raw:
        assert bool(raw.wbits) == bool(headers)
        raw.send_raw(client_frame(TEXT, b"frag1", fin=False) + client_frame(PING, b"pongme")
                     + client_frame(CONT, b"frag2", fin=False) + client_frame(PING, b"again")
                     + client_frame(CONT, b"frag3"))
        frames = [raw.recv_frame() for _ in range(3)]
        assert [(f.opcode, f.payload) for f in frames] == [
            (PONG, b"pongme"), (PONG, b"again"), (TEXT, b"frag1frag2frag3")]


@pytest.mark.parametrize("headers", [{}, DEFLATE], ids=["plain", "deflate"])
def test_pings_and_data_in_one_segment(wsgw, headers):
    """Every ping gets its pong, and answers leave in the order of what they answer:
    the echo of a message before a ping comes before its pong."""
    with echo(wsgw, headers=headers) as raw:
        raw.send_raw(client_frame(TEXT, b"one") + client_frame(PING, b"p1") + client_frame(TEXT, b"two")
                     + client_frame(PING, b"p2"))
        frames = [raw.recv_frame() for _ in range(4)]
        assert [(f.opcode, f.payload) for f in frames] == [
            (TEXT, b"one"), (PONG, b"p1"), (TEXT, b"two"), (PONG, b"p2")]


# -- closing handshake ----------------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason"), [(1000, "bye"), (1001, ""), (1011, "x"), (3000, "app"),
                                              (4999, "private")])
def test_close_echoes_the_code(wsgw, code, reason):
    with echo(wsgw) as raw:
        raw.send(CLOSE, close_payload(code, reason))
        frame = raw.expect_close(code)
        assert frame.close_reason == reason


def test_empty_close_is_answered(wsgw):
    with echo(wsgw) as raw:
        raw.send(CLOSE, b"")
        frame = raw.recv_frame()
        assert (frame.opcode, frame.payload) == (CLOSE, b"")  # section 5.5.1: no code, none echoed
        raw.expect_eof()


CLOSES_BETWEEN_FRAGMENTS = {
    "one segment": lambda payload: [client_frame(TEXT, b"fragment1", fin=False) + client_frame(CLOSE, payload)
                                     + client_frame(CONT, b"fragment2")],
    "separate reads": lambda payload: [client_frame(TEXT, b"fragment1", fin=False), client_frame(CLOSE, payload),
                                       client_frame(CONT, b"fragment2")],
    "close cut in two reads": lambda payload: cut_close(
        client_frame(BINARY, b"fragment1", fin=False) + client_frame(CONT, b"f2", fin=False),
        client_frame(CLOSE, payload)),
}


def cut_close(before: bytes, close: bytes) -> list[bytes]:
    return [before + close[:3], close[3:]]


@pytest.mark.parametrize("send", CLOSES_BETWEEN_FRAGMENTS.values(), ids=CLOSES_BETWEEN_FRAGMENTS.keys())
@pytest.mark.parametrize("headers", [{}, DEFLATE], ids=["plain", "deflate"])
def test_close_between_fragments_is_a_normal_close(wsgw, send, headers):
    """Section 5.4: a close frame may come between the fragments of a message. The
    message is dropped, the code is echoed (section 5.5.1) and the server closes the
    TCP connection (Autobahn case 7.1.5)."""
    with echo(wsgw, headers=headers) as raw:
        for chunk in send(close_payload(1000, "done")):
            raw.send_raw(chunk)
            time.sleep(0.01)
        frame = raw.expect_close(1000)
        assert frame.close_reason == "done"
    with echo(wsgw) as raw:
        raw.send_raw(client_frame(TEXT, b"fragment1", fin=False) + client_frame(CLOSE, b""))
        frame = raw.recv_frame()
        assert (frame.opcode, frame.payload) == (CLOSE, b"")
        raw.expect_eof()


def test_invalid_close_reason_between_fragments_closes_1007(wsgw):
    with echo(wsgw) as raw:
        raw.send_raw(client_frame(TEXT, b"fragment1", fin=False)
                     + client_frame(CLOSE, struct.pack("!H", 1000) + b"\xff"))
        raw.expect_close(1007)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_close_code_closes_1002(wsgw, code):
    with echo(wsgw) as raw:
        raw.send(CLOSE, close_payload(code))
        raw.expect_close(1002)


def test_data_after_close_is_ignored(wsgw):
    with echo(wsgw) as raw:
        raw.send_raw(client_frame(CLOSE, close_payload(1000)) + client_frame(TEXT, b"late"))
        raw.expect_close(1000)
