"""What a SockJS send body gets, property-based: every body a client can post to
``xhr_send`` or ``jsonp_send`` (trailing garbage, nested arrays, non-strings, bodies
that are not UTF-8, a byte order mark, ``d=%ZZ``, ``d`` repeated or missing, empty
bodies, huge ones) gets the answer docs/endpoints.md ("What a send may carry") gives,
following sockjs-protocol's ``XhrPolling.test_invalid_json`` and
``JsonPolling.test_invalid_json``: 204 (``xhr_send``) or 200 ``ok`` (``jsonp_send``)
with the messages delivered in order, 500 ``Payload expected.`` or ``Broken JSON
encoding.`` with nothing delivered, or 413.

The expected answer comes from a model written here (RFC 8259 JSON read by the standard
library from strict UTF-8, the WHATWG urlencoded parser by hand), checked against the
pure decoder (sockway.sockjs.payload) and against a running gateway, whose log must stay
clean. Hypothesis prints the failing body and a ``@reproduce_failure`` blob."""

from __future__ import annotations

import json
import uuid
from urllib.parse import quote, quote_plus, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sockjs_wire import request

from sockway.sockjs.payload import PayloadError, decode_messages, form_field
from support import assert_clean_log, config_gateway, log_mark

LIMIT = 200
"""The endpoint's max_message_size: small, so that bodies over it are cheap."""
BODY_LIMIT = 2 * LIMIT + 64
"""The largest send body read: a message of LIMIT bytes escaped as JSON, and some."""
FORM = "application/x-www-form-urlencoded"

BROKEN = "Broken JSON encoding."
EXPECTED = "Payload expected."


# -- the model -----------------------------------------------------------------------------


def urlencoded_d(body: bytes) -> bytes:
    """The first ``d`` of a form body, percent-decoded to bytes, b"" if there is none:
    the WHATWG application/x-www-form-urlencoded parser (split on ``&``, then on the
    first ``=``, ``+`` is a space, invalid escapes such as ``%ZZ`` stay as they are)."""
    for field in body.split(b"&"):
        if not field:
            continue
        name, _, value = field.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == b"d":
            return unquote_to_bytes(value.replace(b"+", b" "))
    return b""


def model_payload(payload: bytes) -> list[str] | str:
    """The messages of a send's payload, or the 500 text it gets."""
    if not payload:
        return EXPECTED
    try:
        value = json.loads(payload.decode("utf-8"))  # strict UTF-8; a BOM is not JSON
    except (UnicodeDecodeError, ValueError, RecursionError):
        return BROKEN
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        return BROKEN
    return value


def utf8_size(message: str) -> int:
    """A message's size against max_message_size: its UTF-8 bytes (a lone surrogate,
    which a JSON escape can carry, counted as the 3 bytes it would take)."""
    return len(message.encode("utf-8", "surrogatepass"))


def model(transport: str, content_type: str, body: bytes) -> tuple[int, bytes, list[str] | None]:
    """(status, response body, messages delivered or None) the gateway must answer."""
    if len(body) > BODY_LIMIT:
        return 413, f"Payload over the {LIMIT} byte limit.\n".encode(), None
    form = transport == "jsonp_send" and content_type == FORM
    messages = model_payload(urlencoded_d(body) if form else body)
    if isinstance(messages, str):
        return 500, messages.encode(), None
    if any(utf8_size(m) > LIMIT for m in messages):
        return 413, f"Message over the {LIMIT} byte limit.\n".encode(), None
    return (204, b"", messages) if transport == "xhr_send" else (200, b"ok", messages)


# -- bodies --------------------------------------------------------------------------------


_message = st.text(max_size=12) | st.sampled_from(
    ["", "é", "\u2028", "</script>", "\ud800", "a\udc00b", "\x00", '"', "\\", "\ufeff", "x" * LIMIT,
     "é" * (LIMIT // 2), "é" * (LIMIT // 2 + 1), "\U0001f600" * (LIMIT // 4 + 1)])
_messages = st.lists(_message, max_size=4)
_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)


@st.composite
def json_text(draw, value) -> bytes:
    """``value`` as JSON, written in one of the ways JSON allows (ASCII escapes or
    UTF-8, compact or spaced, whitespace around); a lone surrogate written as raw
    bytes (``surrogatepass``) is not UTF-8."""
    text = json.dumps(value, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if draw(st.booleans()):
        text = draw(st.sampled_from([" ", "\n", "\t", "\r\n "])) + text + draw(st.sampled_from([" ", "\n", ""]))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def payload(draw) -> bytes:
    good = draw(json_text(draw(_messages)))
    kind = draw(st.sampled_from(["good", "good", "garbage", "nested", "not strings", "not utf-8", "bom",
                                 "cut", "empty", "scalar", "huge", "binary"]))
    if kind == "good":
        return good
    if kind == "garbage":
        return good + draw(st.sampled_from([b"x", b"]", b",", b"[]", b"\x00", b"\xff", b'"a"', b"]]", b"{"]))
    if kind == "nested":
        return draw(json_text(draw(st.lists(_messages | _message, min_size=1, max_size=3))))
    if kind == "not strings":
        return draw(json_text(draw(st.lists(_message | _scalar, min_size=1, max_size=4))))
    if kind == "not utf-8":
        at = draw(st.integers(0, len(good)))
        bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf4\x90\x80\x80"]))
        return good[:at] + bad + good[at:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + good
    if kind == "cut":
        return good[:draw(st.integers(0, max(0, len(good) - 1)))]
    if kind == "empty":
        return draw(st.sampled_from([b"", b" ", b"\n", b"\r\n"]))
    if kind == "scalar":
        return draw(st.sampled_from([b'"a"', b"null", b"{}", b'{"d":["a"]}', b"1", b"true", b"[1]", b"[null]"]))
    if kind == "huge":
        size = draw(st.integers(LIMIT - 2, BODY_LIMIT + 10))
        return json.dumps([draw(st.sampled_from(["x", "é", "\\"])) * size], ensure_ascii=draw(st.booleans())).encode()
    return draw(st.binary(max_size=40))


@st.composite
def form(draw) -> bytes:
    """A jsonp_send form body: ``d`` percent-encoded (or ``+`` for spaces, or raw), with
    other fields, ``d`` repeated or missing, and invalid escapes."""
    first, second = draw(payload()), draw(payload())
    enc = draw(st.sampled_from([lambda b: quote(b, safe="").encode(), lambda b: quote_plus(b).encode(),
                                lambda b: b]))
    kind = draw(st.sampled_from(["d", "d", "d", "repeated", "other first", "other after", "no d", "bare d",
                                 "bad escape", "encoded name"]))
    if kind == "d":
        return b"d=" + enc(first)
    if kind == "repeated":
        return b"d=" + enc(first) + b"&d=" + enc(second)
    if kind == "other first":
        return b"p=p&&d=" + enc(first)
    if kind == "other after":
        return b"d=" + enc(first) + b"&p=" + enc(second)
    if kind == "no d":
        return draw(st.sampled_from([b"", b"p=p", b"dd=%5B%5D", b"&", b"=x"]))
    if kind == "bare d":
        return draw(st.sampled_from([b"d", b"d=", b"d&d=%5B%22x%22%5D"]))
    if kind == "bad escape":
        return b"d=" + draw(st.sampled_from([b"%ZZ", b"%5B%22x%ZZ%22%5D", b"%", b"%5", b"%5B%22%FF%22%5D",
                                             b"%5B%22%C3%A9%22%5D", b"%EF%BB%BF%5B%5D"]))
    return b"%64=" + enc(first)


SENDS = st.one_of(
    st.tuples(st.just("xhr_send"), st.sampled_from(["text/plain", FORM, "application/json"]), payload()),
    st.tuples(st.just("jsonp_send"), st.sampled_from(["text/plain", "application/json"]), payload()),
    st.tuples(st.just("jsonp_send"), st.just(FORM), form()),
)


# -- the pure decoder ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, print_blob=True)
@given(send=SENDS)
def test_decoder_agrees_with_the_model(send):
    transport, content_type, body = send
    status, text, messages = model(transport, content_type, body)
    if status == 413:
        return  # size limits are the endpoint's, checked against the gateway below
    form = transport == "jsonp_send" and content_type == FORM
    try:
        got: list[str] | str = decode_messages(form_field(body) if form else body)
    except PayloadError as exc:
        got = str(exc)
    assert got == (messages if messages is not None else text.decode())


# -- a running gateway ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw():
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[[endpoint]]
prefix = "/echo"
mode = "echo"
max_message_size = {LIMIT}
heartbeat_delay = 25
"""
    with config_gateway(config) as proc:
        yield proc


def _poll_until(port: int, url: str, last: str) -> list:
    """Echoes polled from the session until ``last`` comes (bounded: 20 polls)."""
    got: list = []
    for _ in range(20):
        r = request(port, "POST", url + "/xhr")
        assert r.status == 200, (r.status, r.body)
        assert r.body.startswith(b"a[") and r.body.endswith(b"]\n"), r.body
        got += json.loads(r.body[1:])
        if got and got[-1] == last:
            return got[:-1]
    raise AssertionError(f"{last!r} never came back; got {got!r}")


def test_gateway_answers_every_body_as_documented(gw):
    """A fresh session per example: open, the send, then a marker message; the echoes
    that come back before the marker are exactly the messages the send delivered."""
    mark = log_mark(gw)

    @settings(max_examples=250, deadline=None, print_blob=True, suppress_health_check=list(HealthCheck))
    @given(send=SENDS)
    def check(send):
        transport, content_type, body = send
        status, text, messages = model(transport, content_type, body)
        url = f"/echo/000/{uuid.uuid4()}"  # never reused, even when hypothesis replays an example
        assert request(gw.port, "POST", url + "/xhr").body == b"o\n"
        r = request(gw.port, "POST", f"{url}/{transport}", {"Content-Type": content_type}, body)
        assert (r.status, r.body) == (status, text), (transport, content_type, body)
        if text.startswith(b"Message over"):
            # The session is closed with 1009.
            assert request(gw.port, "POST", url + "/xhr").body == b'c[1009,"Message too big"]\n'
            return
        r = request(gw.port, "POST", url + "/xhr_send", None, b'["marker"]')
        assert (r.status, r.body) == (204, b"")
        assert _poll_until(gw.port, url, "marker") == (messages or [])

    check()
    assert_clean_log(gw, mark)
