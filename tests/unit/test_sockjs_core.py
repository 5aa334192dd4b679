"""The SockJS protocol core without I/O: escaping, framing, payloads, URLs, sessions.

Property-based (hypothesis): any message survives encoding and decoding through every
transport's framing, and any split of a transport's byte stream decodes to the same
frames.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transport_decoders import DECODERS, decode_stream

from sockway.sockjs import frames
from sockway.sockjs.escaping import ESCAPABLE_BY_SERVER, quote, quote_js
from sockway.sockjs.payload import BROKEN_JSON, PAYLOAD_EXPECTED, PayloadError, decode_messages
from sockway.sockjs.session import Session, State
from sockway.sockjs.urls import parse_path

# Every code point, lone surrogates included (browsers can send them).
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=200)
messages = st.lists(any_text, min_size=1, max_size=8)


def utf16(text: str) -> bytes:
    """Strings compared as JavaScript sees them: a high and a low surrogate in a row
    are the same string as the astral character they encode."""
    return text.encode("utf-16-le", "surrogatepass")


def test_quote_escapes_every_server_escapable_character():
    chars = "".join(chr(c) for c in range(0x10000) if ESCAPABLE_BY_SERVER.match(chr(c)) or c < 0x20)
    encoded = quote(chars).decode("ascii")
    # Nothing but escapes and quotes: every one of them went out as \uXXXX (or \n etc.).
    assert re.fullmatch(r'"(\\u[0-9a-f]{4}|\\[bfnrt"\\])*"', encoded)
    assert utf16(json.loads(encoded)) == utf16(chars)


@given(any_text)
def test_quote_round_trips(text):
    encoded = quote(text)
    encoded.decode("utf-8")  # always valid UTF-8
    assert ESCAPABLE_BY_SERVER.search(encoded.decode("utf-8")) is None
    assert utf16(json.loads(encoded)) == utf16(text)


@given(any_text)
def test_quote_js_is_safe_inside_a_script_element(text):
    frame = frames.messages_frame([quote(text)])
    literal = quote_js(frame).decode("utf-8")
    assert "<" not in literal and ">" not in literal
    assert json.loads(literal) == frame.decode("utf-8")


@pytest.mark.parametrize("transport", sorted(DECODERS))
@settings(max_examples=60, deadline=None)
@given(batches=st.lists(messages, min_size=1, max_size=5), data=st.data())
def test_any_message_survives_every_transport_and_any_split(transport, batches, data):
    """Encode message batches as a transport would, cut the byte stream anywhere,
    decode it incrementally: the same messages come out, in order."""
    stream = b"".join(
        DECODERS[transport].wrap(frames.messages_frame([quote(m) for m in batch]))
        for batch in batches
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(stream[last:cut])
        last = cut
    pieces.append(stream[last:])
    decoded = decode_stream(transport, pieces)
    assert [utf16(m) for m in decoded] == [utf16(m) for batch in batches for m in batch]


def test_close_and_special_frames():
    assert frames.close_frame(3000, "Go away!") == b'c[3000,"Go away!"]'
    assert frames.ANOTHER_CONNECTION == b'c[2010,"Another connection still open"]'
    assert frames.wrap_xhr(frames.OPEN) == b"o\n"
    assert frames.wrap_eventsource(frames.OPEN) == b"data: o\r\n\r\n"
    assert frames.wrap_jsonp(frames.OPEN, b"cb") == b'/**/cb("o");\r\n'
    assert frames.wrap_htmlfile(frames.OPEN) == b'<script>\np("o");\n</script>\r\n'
    assert len(frames.XHR_STREAMING_PRELUDE) == 2049
    prelude = frames.htmlfile_prelude("callback")
    assert len(prelude) > 1024 and b"var c = parent.callback;" in prelude


def test_info_body():
    info = json.loads(frames.info_body(True, False, 42))
    assert info == {"websocket": True, "cookie_needed": False, "origins": ["*:*"], "entropy": 42}


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'["a"]', ["a"]), (b"[]", []), (b'["a","b"]', ["a", "b"]), ('["\\ud800"]', ["\ud800"])],
)
def test_decode_messages(body, expected):
    assert decode_messages(body) == expected


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"", PAYLOAD_EXPECTED), (b'["x', BROKEN_JSON), (b"[1]", BROKEN_JSON), (b'{"a":1}', BROKEN_JSON),
     (b'"a"', BROKEN_JSON), (b"\xff\xfe", BROKEN_JSON)],
)
def test_decode_messages_errors(body, error):
    with pytest.raises(PayloadError) as exc:
        decode_messages(body)
    assert str(exc.value) == error


def test_websocket_accepts_a_bare_string():
    assert decode_messages('"a"', allow_string=True) == ["a"]


@pytest.mark.parametrize(
    ("tail", "kind"),
    [
        ("", "greeting"), ("/", "greeting"), ("/info", "info"), ("/websocket", "raw_websocket"),
        ("/iframe.html", "iframe"), ("/iframe-0.1.2abc-dirty.2144.html", "iframe"),
        ("/iframe-.html", "iframe"), ("/iframe.htm", "not_found"), ("/IFRAME.HTML", "not_found"),
        ("/iframe-/.html", "not_found"), ("/a/b/xhr", "transport"), ("/a/b/c", "not_found"),
        ("/a./b/xhr", "not_found"), ("/a/b./xhr", "not_found"), ("//xhr", "not_found"),
        ("/a", "not_found"), ("/a/a/", "not_found"), ("/a b/c_d-e/jsonp", "transport"),
        # Matched whole: a pattern ending in "$" also matches before a trailing newline.
        ("/iframe.html\n", "not_found"), ("/a/b/xhr\n", "not_found"), ("/info\n", "not_found"),
    ],
)
def test_parse_path(tail, kind):
    assert parse_path(tail).kind == kind


@pytest.mark.parametrize("callback", ["cb\n", "\ncb", "c\nb", "cb ", "", "x" * 257, "cb()", "é"])
def test_invalid_callbacks(callback):
    assert frames.CALLBACK_RE.fullmatch(callback) is None


@given(st.from_regex(r"[a-zA-Z0-9_.\-]{1,256}", fullmatch=True))
def test_valid_callbacks(callback):
    assert frames.CALLBACK_RE.fullmatch(callback) is not None


class TestSession:
    def test_open_then_messages_then_close(self):
        s = Session("s", now=0.0)
        attach = s.attach(0.0)
        assert attach.frames == [b"o"] and attach.opened and not attach.release
        assert s.state is State.OPEN
        assert s.enqueue(quote("a")) and s.enqueue(quote("b"))
        assert s.pending_frames() == [b'a["a","b"]']
        s.detach(1.0)
        assert s.close(3000, "Go away!")
        assert not s.close(3000, "again")
        again = s.attach(2.0)
        assert again.frames == [b'c[3000,"Go away!"]'] and again.release

    def test_second_receiver_is_refused_and_first_keeps_the_session(self):
        s = Session("s", 0.0)
        s.attach(0.0)
        second = s.attach(0.1)
        assert second.frames == [frames.ANOTHER_CONNECTION] and second.release
        assert s.attached and s.state is State.OPEN

    def test_messages_queued_before_close_are_delivered_first(self):
        s = Session("s", 0.0)
        s.attach(0.0)
        s.detach(0.0)
        s.enqueue(quote("last words"))
        s.close(3000, "Go away!")
        assert s.take_one() == b'a["last words"]'
        assert s.take_one() == b'c[3000,"Go away!"]'
        assert s.take_one() == b'c[3000,"Go away!"]'

    def test_abort_closes_with_1002(self):
        s = Session("s", 0.0)
        s.attach(0.0)
        assert s.detach(1.0, aborted=True)
        assert s.close_frame == b'c[1002,"Connection interrupted"]'

    def test_timers(self):
        s = Session("s", 0.0)
        assert s.expired(5.0, 5.0)
        s.attach(1.0)
        assert not s.expired(100.0, 5.0)
        assert not s.heartbeat_due(10.0, 25.0) and s.heartbeat_due(26.0, 25.0)
        s.detach(30.0)
        assert not s.expired(34.0, 5.0) and s.expired(35.0, 5.0)

    def test_queue_is_bounded(self):
        s = Session("s", 0.0, max_queue_bytes=100)
        assert s.enqueue(b'"' + b"x" * 50 + b'"')
        assert not s.enqueue(b'"' + b"x" * 50 + b'"')
        assert s.queue_bytes <= 100
