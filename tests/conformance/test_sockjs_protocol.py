"""SockJS protocol conformance, checked against a running ``sockway testserver``.

The specification is the sockjs/sockjs-protocol test suite (``sockjs-protocol.py`` and
``http-quirks.py``, latest revision). That suite is Python 2; this is an independent
Python 3 rendering of what it checks: one test class per class of the specification
(``TestXhrPolling`` checks what ``XhrPolling`` checks, and so on), each test's docstring
naming the specification test it covers. ``TestBeyondReference`` adds checks the
reference does not make but sockway promises: script-safe htmlfile/jsonp output, lone
surrogates, callback limits, and what sockjs-client needs from eventsource (CORS, no
``%`` for its ``decodeURI`` to mangle).

HTTP goes over raw sockets (:mod:`sockjs_wire`) so that framing, chunking and
connection handling are visible; WebSocket uses the ``websockets`` synchronous client
(without compression, like the reference's client). Every wait is bounded by
``sockjs_wire.TIMEOUT``. Sessions use fresh random ids, so the suite can be rerun at
once against the same server.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
from sockjs_wire import TIMEOUT, Connection, Response, Stream, open_stream, request
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ECHO = "/echo"
CLOSE = "/close"
WS_OFF = "/disabled_websocket_echo"
COOKIE = "/cookie_needed_echo"

NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
GREETING = b"Welcome to SockJS!\n"
GO_AWAY = b'c[3000,"Go away!"]'
ANOTHER_CONNECTION = b'c[2010,"Another connection still open"]'
INTERRUPTED = b'c[1002,"Connection interrupted"]'
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# -- plumbing ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def port(testserver) -> int:
    return testserver.port


def new_session(prefix: str = ECHO) -> str:
    """``<prefix>/<server>/<session>`` with a fresh session id."""
    return f"{prefix}/000/{uuid.uuid4()}"


def get(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    return request(port, "GET", path, headers)


def post(port: int, path: str, body: bytes | str = b"",
         headers: dict[str, str] | None = None) -> Response:
    return request(port, "POST", path, headers, body)


def options(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    return request(port, "OPTIONS", path, headers)


def content_type(r: Response) -> str | None:
    value = r.header("Content-Type")
    return None if value is None else value.replace(" ", "")


def assert_404(r: Response) -> None:
    assert r.status == 404, (r.status, r.body)


def assert_405(r: Response) -> None:
    """405 with an ``Allow`` header and neither a body nor a content type."""
    assert r.status == 405, (r.status, r.body)
    assert not r.header("Content-Type"), r.headers
    assert r.header("Allow"), r.headers
    assert r.body == b""


def assert_no_cookie(r: Response) -> None:
    assert r.header("Set-Cookie") is None, r.headers


def assert_not_cached(r: Response) -> None:
    assert r.header("Cache-Control") == NO_CACHE, r.headers
    assert r.header("Expires") is None, r.headers
    assert r.header("Last-Modified") is None, r.headers


def assert_cors(r: Response, origin: str | None = None) -> None:
    if origin:
        assert r.header("Access-Control-Allow-Origin") == origin, r.headers
        # Credentials, so that JSESSIONID cookies flow.
        assert r.header("Access-Control-Allow-Credentials") == "true", r.headers
    else:
        assert r.header("Access-Control-Allow-Origin") == "*", r.headers
        assert not r.header("Access-Control-Allow-Credentials"), r.headers


def assert_cached_for_long(r: Response) -> None:
    cache_control = r.header("Cache-Control") or ""
    assert "public" in cache_control, r.headers
    assert re.search(r"max-age=[1-9][0-9]{6}", cache_control), "max-age must be about a year"
    assert r.header("Expires"), r.headers


def assert_options(port: int, path: str, methods: str) -> None:
    """The specification's ``verify_options``: a cacheable CORS preflight answer,
    for a normal and for a ``null`` origin."""
    for origin in ("test", "null"):
        r = options(port, path, {"Access-Control-Request-Method": methods, "Origin": origin})
        assert (r.status, r.body) == (204, b""), (r.status, r.body)
        assert_cached_for_long(r)
        assert int(r.header("Access-Control-Max-Age") or 0) > 1_000_000, r.headers
        allowed = r.header("Access-Control-Allow-Methods") or ""
        for method in methods.split(","):
            assert method.strip() in allowed, (method, allowed)
        assert r.body == b""
        assert_cors(r, origin)


def assert_cookie(r: Response, value: str = "dummy") -> None:
    """``Set-Cookie: JSESSIONID=<value>; path=/``."""
    cookie = r.header("Set-Cookie")
    assert cookie is not None, r.headers
    parts = cookie.split(";")
    assert parts[0].strip() == f"JSESSIONID={value}", cookie
    assert len(parts) > 1 and parts[1].strip().lower() == "path=/", cookie


def xhr_stream(port: int, path: str, headers: dict[str, str] | None = None) -> Stream:
    """An xhr_streaming request whose prelude has been read and checked."""
    stream = open_stream(port, "POST", path + "/xhr_streaming", headers, b"")
    try:
        assert stream.response.status == 200, stream.response
        assert stream.read_exact(2049) == b"h" * 2048 + b"\n"
    except BaseException:
        stream.close()
        raise
    return stream


def ws_url(port: int, path: str) -> str:
    return f"ws://127.0.0.1:{port}{path}"


def ws_connect(port: int, path: str) -> ClientConnection:
    return connect(ws_url(port, path), open_timeout=TIMEOUT, close_timeout=1, compression=None,
                   proxy=None, ping_interval=None)


def ws_recv(ws: ClientConnection) -> str | bytes:
    return ws.recv(timeout=TIMEOUT)


def ws_expect_closed(ws: ClientConnection) -> ConnectionClosed:
    """The server ends the connection within ``TIMEOUT`` seconds without sending
    another message; returns how it ended (close frame received or not)."""
    try:
        message = ws.recv(timeout=TIMEOUT)
    except ConnectionClosed as exc:
        return exc
    except TimeoutError:
        raise AssertionError("the connection is still open") from None
    raise AssertionError(f"a message instead of the end of the connection: {message!r}")


@pytest.fixture
def hanging() -> Iterator[list[Connection]]:
    """Connections a test leaves waiting for a response; closed at the end."""
    connections: list[Connection] = []
    yield connections
    for conn in connections:
        conn.close()


def start_poll(port: int, path: str, hanging: list[Connection]) -> Connection:
    """Send an xhr poll and do not read its answer: it stays attached to the session."""
    conn = Connection(port)
    hanging.append(conn)
    conn.send_request("POST", path + "/xhr", body=b"")
    time.sleep(0.25)  # let the server attach it, as the specification does
    return conn


# -- Base URL ----------------------------------------------------------------------------


class TestBaseUrlGreeting:
    """sockjs-protocol ``BaseUrlGreeting``: the greeting at the base URL."""

    def test_greeting_with_and_without_trailing_slash(self, port):
        """BaseUrlGreeting.test_greeting: 200, text/plain UTF-8, the greeting text,
        no cookie."""
        for path in (ECHO, ECHO + "/"):
            r = get(port, path)
            assert r.status == 200
            assert content_type(r) == "text/plain;charset=UTF-8"
            assert r.body == GREETING
            assert_no_cookie(r)

    def test_other_paths_are_not_found(self, port):
        """BaseUrlGreeting.test_notFound: unknown paths under the base URL give 404."""
        for suffix in ("/a", "/a.html", "//", "///", "/a/a", "/a/a/", "/a", "/a/"):
            assert_404(get(port, ECHO + suffix))


# -- IFrame page -------------------------------------------------------------------------

_IFRAME_PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="@SOCKJS_URL@"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"""
IFRAME_RE = re.compile(
    "^" + '(?P<sockjs_url>[^"]*)'.join(re.escape(p) for p in _IFRAME_PAGE.split("@SOCKJS_URL@")) + "$"
)


class TestIframePage:
    """sockjs-protocol ``IframePage``: the page iframe-based transports load."""

    def verify(self, port: int, path: str) -> Response:
        r = get(port, path)
        assert r.status == 200, (path, r.status)
        assert content_type(r) == "text/html;charset=UTF-8"
        # Strongly cacheable: Cache-Control, Expires and ETag; no Last-Modified.
        assert_cached_for_long(r)
        assert r.header("ETag"), r.headers
        assert r.header("Last-Modified") is None
        match = IFRAME_RE.match(r.text.strip())
        assert match, r.text
        sockjs_url = match.group("sockjs_url")
        assert sockjs_url.startswith(("/", "http")), sockjs_url
        assert_no_cookie(r)
        return r

    def test_plain_url(self, port):
        """IframePage.test_simpleUrl: ``/iframe.html``."""
        self.verify(port, ECHO + "/iframe.html")

    def test_versioned_urls_serve_the_same_page(self, port):
        """IframePage.test_versionedUrl: ``/iframe-<anything>.html``."""
        for suffix in ("/iframe-a.html", "/iframe-.html", "/iframe-0.1.2.html",
                       "/iframe-0.1.2abc-dirty.2144.html"):
            self.verify(port, ECHO + suffix)

    def test_query_string_is_ignored(self, port):
        """IframePage.test_queriedUrl: a cache-busting query string."""
        for suffix in ("/iframe-a.html?t=1234", "/iframe-0.1.2.html?t=123414",
                       "/iframe-0.1.2abc-dirty.2144.html?t=qweqweq123"):
            self.verify(port, ECHO + suffix)

    def test_malformed_names_are_not_found(self, port):
        """IframePage.test_invalidUrl."""
        for suffix in ("/iframe.htm", "/iframe", "/IFRAME.HTML", "/IFRAME", "/iframe.HTML",
                       "/iframe.xml", "/iframe-/.html"):
            assert_404(get(port, ECHO + suffix))

    def test_stable_etag_and_304_on_if_none_match(self, port):
        """IframePage.test_cacheability: the same ETag twice; If-None-Match gives an
        empty 304 without a content type."""
        r1 = get(port, ECHO + "/iframe.html")
        r2 = get(port, ECHO + "/iframe.html")
        assert r1.header("ETag")
        assert r1.header("ETag") == r2.header("ETag")
        r = get(port, ECHO + "/iframe.html", {"If-None-Match": r1.header("ETag") or ""})
        assert r.status == 304
        assert not r.header("Content-Type"), r.headers
        assert r.body == b""


# -- /info -------------------------------------------------------------------------------


class TestInfo:
    """sockjs-protocol ``InfoTest``: the ``/info`` document."""

    def test_document_and_headers(self, port):
        """InfoTest.test_basic: JSON, not cached, CORS, no cookie; websocket on,
        cookie_needed a boolean, origins ``["*:*"]``, an integer entropy."""
        r = get(port, ECHO + "/info", {"Origin": "test"})
        assert r.status == 200
        assert content_type(r) == "application/json;charset=UTF-8"
        assert_no_cookie(r)
        assert_not_cached(r)
        assert_cors(r, "test")
        data = json.loads(r.body)
        assert data["websocket"] is True
        assert data["cookie_needed"] is False  # the endpoint's setting (the default)
        assert data["origins"] == ["*:*"]
        assert type(data["entropy"]) is int

    def test_entropy_differs_between_requests(self, port):
        """InfoTest.test_entropy."""
        e1 = json.loads(get(port, ECHO + "/info").body)["entropy"]
        e2 = json.loads(get(port, ECHO + "/info").body)["entropy"]
        assert type(e1) is int and type(e2) is int
        assert e1 != e2
        assert 0 <= e1 < 2**32 and 0 <= e2 < 2**32

    def test_options_preflight(self, port):
        """InfoTest.test_options."""
        assert_options(port, ECHO + "/info", "OPTIONS, GET")

    def test_options_with_null_origin_echoes_null(self, port):
        """InfoTest.test_options_null_origin: pages from file:// send ``Origin: null``."""
        r = options(port, ECHO + "/info",
                    {"Origin": "null", "Access-Control-Request-Method": "POST"})
        assert r.status == 204
        assert r.body == b""
        assert r.header("Access-Control-Allow-Origin") == "null"

    def test_websocket_false_when_disabled(self, port):
        """InfoTest.test_disabled_websocket."""
        r = get(port, WS_OFF + "/info")
        assert r.status == 200
        assert json.loads(r.body)["websocket"] is False


# -- Session URLs ------------------------------------------------------------------------


class TestSessionURLs:
    """sockjs-protocol ``SessionURLs``: ``/<server>/<session>/<transport>``."""

    def assert_opens(self, port: int, session_part: str) -> None:
        r = post(port, ECHO + session_part + "/xhr")
        assert r.status == 200, (session_part, r.status)
        assert r.body == b"o\n"

    def test_any_server_and_session_value(self, port):
        """SessionURLs.test_anyValue."""
        tag = uuid.uuid4().hex
        self.assert_opens(port, "/a/a" + tag)
        for session_part in ("/_/_" + tag, "/1/" + tag, "/abcdefgh_i-j%20/abcdefg_i-j%20" + tag):
            self.assert_opens(port, session_part)

    def test_empty_dotted_or_misshapen_parts_are_not_found(self, port):
        """SessionURLs.test_invalidPaths: GET and POST."""
        for suffix in ("//", "/a./a", "/a/a.", "/./.", "/", "///"):
            assert_404(get(port, ECHO + suffix + "/xhr"))
            assert_404(post(port, ECHO + suffix + "/xhr"))

    def test_server_id_is_ignored(self, port):
        """SessionURLs.test_ignoringServerId: a session is its session id alone."""
        session_id = str(uuid.uuid4())
        r = post(port, f"{ECHO}/000/{session_id}/xhr")
        assert (r.status, r.body) == (200, b"o\n")
        r = post(port, f"{ECHO}/000/{session_id}/xhr_send", '["a"]')
        assert (r.status, r.body) == (204, b"")
        r = post(port, f"{ECHO}/999/{session_id}/xhr")
        assert (r.status, r.body) == (200, b'a["a"]\n')


# -- Protocol and framing ----------------------------------------------------------------


class TestProtocol:
    """sockjs-protocol ``Protocol``: sessions and framing, over xhr-polling."""

    def test_open_send_echo_and_one_receiver_per_session(self, port, hanging):
        """Protocol.test_simpleSession: ``o`` opens, xhr_send answers 204, the echo
        arrives as ``a[...]``; sending to an unknown session is 404; a second
        receiving request gets ``c[2010,...]``."""
        url = new_session()
        r = post(port, url + "/xhr")
        assert (r.status, r.body) == (200, b"o\n")
        r = post(port, url + "/xhr_send", '["a"]')
        assert (r.status, r.body) == (204, b"")
        r = post(port, url + "/xhr")
        assert (r.status, r.body) == (200, b'a["a"]\n')

        assert_404(post(port, ECHO + "/000/bad_session/xhr_send", '["a"]'))

        start_poll(port, url, hanging)
        r2 = post(port, url + "/xhr")
        assert r2.status == 200
        assert r2.body == ANOTHER_CONNECTION + b"\n"

    def test_closed_session_serves_close_frame_repeatedly(self, port):
        """Protocol.test_closeSession: after ``o``, every poll gets the close frame."""
        url = new_session(CLOSE)
        r = post(port, url + "/xhr")
        assert (r.status, r.body) == (200, b"o\n")
        for _ in range(2):
            r = post(port, url + "/xhr")
            assert (r.status, r.body) == (200, GO_AWAY + b"\n")


# -- WebSocket ---------------------------------------------------------------------------


class TestWebsocketHttpErrors:
    """sockjs-protocol ``WebsocketHttpErrors``: non-WebSocket requests to
    ``/*/*/websocket``."""

    def test_plain_get_is_400(self, port):
        """WebsocketHttpErrors.test_httpMethod."""
        assert get(port, ECHO + "/0/0/websocket").status == 400

    def test_connection_header_without_upgrade_is_400(self, port):
        """WebsocketHttpErrors.test_invalidConnectionHeader (a proxy rewrote
        ``Connection``)."""
        r = get(port, ECHO + "/0/0/websocket", {"Upgrade": "WebSocket", "Connection": "close"})
        assert r.status == 400
        assert b"Not a valid websocket request" in r.body

    def test_post_is_405(self, port):
        """WebsocketHttpErrors.test_invalidMethod: with and without upgrade headers."""
        for headers in ({"Upgrade": "WebSocket", "Connection": "Upgrade"}, {}):
            assert_405(post(port, ECHO + "/0/0/websocket", headers=headers))


# hixie-76 (draft-ietf-hybi-thewebsocketprotocol-00) handshake of Websocket.test_haproxy.
HIXIE_KEY1 = "4 @1  46546xW%0l 1 5"
HIXIE_KEY2 = "12998 5 Y3 1  .P00"
HIXIE_KEY3 = b"aaaaaaaa"
HIXIE_ANSWER = b"\xca4\x00\xd8\xa5\x08G\x97,\xd5qZ\xba\xbfC{"


def hixie76_answer(key1: str, key2: str, key3: bytes) -> bytes:
    """MD5 of the two key numbers (digits divided by spaces, big-endian 32 bits) and
    the 8 key bytes (draft-hixie-thewebsocketprotocol-76 section 5.2)."""
    def number(key: str) -> int:
        return int("".join(c for c in key if c.isdigit())) // key.count(" ")

    return hashlib.md5(struct.pack(">II", number(key1), number(key2)) + key3).digest()


class TestWebsocket:
    """sockjs-protocol ``Websocket``: the SockJS ``websocket`` transport."""

    def test_open_then_echo(self, port):
        """Websocket.test_transport."""
        with ws_connect(port, new_session() + "/websocket") as ws:
            assert ws_recv(ws) == "o"
            ws.send('["a"]')
            assert ws_recv(ws) == 'a["a"]'

    def test_close_frame_then_connection_closed(self, port):
        """Websocket.test_close: ``c[3000,"Go away!"]``, then the server closes."""
        with ws_connect(port, new_session(CLOSE) + "/websocket") as ws:
            assert ws_recv(ws) == "o"
            assert ws_recv(ws) == GO_AWAY.decode()
            ws_expect_closed(ws)

    def test_rfc6455_handshake_headers(self, port):
        """Websocket.test_headersSanity: 101 with the right Sec-WebSocket-Accept,
        Connection and Upgrade, and no Content-Length."""
        path = new_session() + "/websocket"
        with Connection(port) as conn:
            conn.send_request("GET", path, {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Origin": "http://asd",
                "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw==",
            })
            r = conn.read_head()
        assert r.status == 101
        assert r.header("Sec-WebSocket-Accept") == "HSmrc0sMlYUkAGmm5OPpG2HaGWk="
        assert (r.header("Connection") or "").lower() == "upgrade"
        assert (r.header("Upgrade") or "").lower() == "websocket"
        assert r.header("Content-Length") is None

    def test_empty_messages_and_empty_arrays_are_ignored(self, port):
        """Websocket.test_empty_frame."""
        with ws_connect(port, new_session() + "/websocket") as ws:
            assert ws_recv(ws) == "o"
            ws.send("")
            ws.send("[]")
            ws.send('["a"]')
            assert ws_recv(ws) == 'a["a"]'

    def test_session_id_may_be_shared_and_reused(self, port):
        """Websocket.test_reuseSessionId: two live connections with one session id
        are independent; the id works again after both closed."""
        path = new_session() + "/websocket"
        with ws_connect(port, path) as ws1, ws_connect(port, path) as ws2:
            assert ws_recv(ws1) == "o"
            assert ws_recv(ws2) == "o"
            ws1.send('["a"]')
            assert ws_recv(ws1) == 'a["a"]'
            ws2.send('["b"]')
            assert ws_recv(ws2) == 'a["b"]'
        with ws_connect(port, path) as ws3:
            assert ws_recv(ws3) == "o"
            ws3.send('["a"]')
            assert ws_recv(ws3) == 'a["a"]'

    def test_hixie76_headers_are_sent_before_the_key_bytes(self, port):
        """Websocket.test_haproxy: the response head must come before the client
        sends its 8 key bytes (HAProxy forwards them only then); then the 16-byte
        MD5 answer."""
        assert hixie76_answer(HIXIE_KEY1, HIXIE_KEY2, HIXIE_KEY3) == HIXIE_ANSWER
        path = new_session() + "/websocket"
        origin = f"http://127.0.0.1:{port}"
        with Connection(port) as conn:
            conn.send_request("GET", path, {
                "Connection": "Upgrade",
                "Upgrade": "WebSocket",
                "Origin": origin,
                "Sec-WebSocket-Key1": HIXIE_KEY1,
                "Sec-WebSocket-Key2": HIXIE_KEY2,
            })
            r = conn.read_head()  # before the key bytes are sent
            assert r.status == 101
            assert (r.header("Connection") or "").lower() == "upgrade"
            assert (r.header("Upgrade") or "").lower() == "websocket"
            assert r.header("Sec-WebSocket-Location") == ws_url(port, path)
            assert r.header("Sec-WebSocket-Origin") == origin
            assert r.header("Content-Length") is None
            conn.send(HIXIE_KEY3)
            assert conn.read_exact(16) == HIXIE_ANSWER
            # Not checked by the specification: the SockJS open frame follows.
            assert conn.read_exact(3) == b"\x00o\xff"

    def test_broken_json_terminates_the_connection(self, port):
        """Websocket.test_broken_json: the server drops the connection without
        delivering anything."""
        with ws_connect(port, new_session() + "/websocket") as ws:
            assert ws_recv(ws) == "o"
            ws.send('["a')
            ws_expect_closed(ws)


# -- XHR polling -------------------------------------------------------------------------


class TestXhrPolling:
    """sockjs-protocol ``XhrPolling``: ``/*/*/xhr`` and ``/*/*/xhr_send``."""

    def test_options_preflight(self, port):
        """XhrPolling.test_options."""
        for suffix in ("/xhr", "/xhr_send"):
            assert_options(port, ECHO + "/abc/abc" + suffix, "OPTIONS, POST")

    def test_poll_and_send_headers_and_bodies(self, port):
        """XhrPolling.test_transport: content types (text/plain even on the 204),
        CORS and no caching on both requests."""
        url = new_session()
        r = post(port, url + "/xhr", headers={"Origin": "test"})
        assert (r.status, r.body) == (200, b"o\n")
        assert content_type(r) == "application/javascript;charset=UTF-8"
        assert_cors(r, "test")
        assert_not_cached(r)

        r = post(port, url + "/xhr_send", '["x"]', {"Origin": "test"})
        assert (r.status, r.body) == (204, b"")
        assert content_type(r) == "text/plain;charset=UTF-8"
        assert_cors(r, "test")
        assert_not_cached(r)

        r = post(port, url + "/xhr")
        assert (r.status, r.body) == (200, b'a["x"]\n')

    def test_send_to_unknown_session_is_404(self, port):
        """XhrPolling.test_invalid_session."""
        assert_404(post(port, new_session() + "/xhr_send", '["x"]'))

    def test_broken_and_missing_payload_are_500(self, port):
        """XhrPolling.test_invalid_json: the session survives them."""
        url = new_session()
        assert post(port, url + "/xhr").body == b"o\n"
        r = post(port, url + "/xhr_send", '["x')
        assert r.status == 500
        assert b"Broken JSON encoding." in r.body
        r = post(port, url + "/xhr_send", "")
        assert r.status == 500
        assert b"Payload expected." in r.body
        r = post(port, url + "/xhr_send", '["a"]')
        assert (r.status, r.body) == (204, b"")
        r = post(port, url + "/xhr")
        assert (r.status, r.body) == (200, b'a["a"]\n')

    def test_any_request_content_type_is_accepted(self, port):
        """XhrPolling.test_content_types."""
        url = new_session()
        assert post(port, url + "/xhr").body == b"o\n"
        ctypes = ["text/plain", "T", "application/json", "application/xml", "",
                  "application/json; charset=utf-8", "text/xml; charset=utf-8", "text/xml"]
        for ctype in ctypes:
            r = post(port, url + "/xhr_send", '["a"]', {"Content-Type": ctype})
            assert (r.status, r.body) == (204, b""), ctype
        r = post(port, url + "/xhr")
        assert r.status == 200
        assert r.body == b"a[" + b",".join([b'"a"'] * len(ctypes)) + b"]\n"

    def test_requested_headers_are_echoed_in_preflight(self, port):
        """XhrPolling.test_request_headers_cors: Access-Control-Request-Headers comes
        back as Access-Control-Allow-Headers, and only when non-empty."""
        base = {"Origin": "test", "Access-Control-Request-Method": "POST"}
        r = options(port, new_session() + "/xhr", {**base, "Access-Control-Request-Headers": "a, b, c"})
        assert r.status == 204
        assert_cors(r, "test")
        assert r.header("Access-Control-Allow-Headers") == "a, b, c"
        for extra in ({"Access-Control-Request-Headers": ""}, {}):
            r = options(port, new_session() + "/xhr", {**base, **extra})
            assert r.status == 204
            assert_cors(r, "test")
            assert not r.header("Access-Control-Allow-Headers"), r.headers

    def test_empty_frame_is_accepted(self, port):
        """XhrPolling.test_sending_empty_frame: ``[]`` is a client heartbeat."""
        url = new_session()
        assert post(port, url + "/xhr").body == b"o\n"
        assert post(port, url + "/xhr_send", "[]").status == 204
        assert post(port, url + "/xhr_send", '["a"]').status == 204
        r = post(port, url + "/xhr")
        assert (r.status, r.body) == (200, b'a["a"]\n')


# -- XHR streaming -----------------------------------------------------------------------


class TestXhrStreaming:
    """sockjs-protocol ``XhrStreaming``: ``/*/*/xhr_streaming``."""

    def test_options_preflight(self, port):
        """XhrStreaming.test_options."""
        assert_options(port, ECHO + "/abc/abc/xhr_streaming", "OPTIONS, POST")

    def test_prelude_open_and_messages(self, port):
        """XhrStreaming.test_transport: headers, 2 KiB of ``h`` and a new line, then
        one frame per line."""
        url = new_session()
        with open_stream(port, "POST", url + "/xhr_streaming", {"Origin": "test"}, b"") as stream:
            r = stream.response
            assert r.status == 200
            assert content_type(r) == "application/javascript;charset=UTF-8"
            assert_cors(r, "test")
            assert_not_cached(r)
            assert stream.read_exact(2049) == b"h" * 2048 + b"\n"
            assert stream.read_until(b"\n") == b"o\n"
            r1 = post(port, url + "/xhr_send", '["x"]')
            assert (r1.status, r1.body) == (204, b"")
            assert stream.read_until(b"\n") == b'a["x"]\n'

    def test_response_closed_after_response_limit(self, port):
        """XhrStreaming.test_response_limit: the test server ends a streaming response
        once 4096 bytes of frames were sent: 31 frames of 134 bytes."""
        url = new_session()
        with xhr_stream(port, url) as stream:
            assert stream.read_until(b"\n") == b"o\n"
            msg = '"' + "x" * 128 + '"'
            for _ in range(31):
                r1 = post(port, url + "/xhr_send", "[" + msg + "]")
                assert r1.status == 204
                assert stream.read_until(b"\n") == ("a[" + msg + "]\n").encode()
            stream.assert_ends()


# -- EventSource -------------------------------------------------------------------------


class TestEventSource:
    """sockjs-protocol ``EventSource``: ``/*/*/eventsource``."""

    def test_prelude_open_and_messages(self, port):
        """EventSource.test_transport: text/event-stream, not cached, a CRLF prelude
        (an Opera bug), one ``data:`` event per frame; control characters arrive
        JSON-escaped."""
        url = new_session()
        with open_stream(port, "GET", url + "/eventsource") as stream:
            r = stream.response
            assert r.status == 200
            assert content_type(r) == "text/event-stream"
            assert_not_cached(r)
            assert stream.read_exact(2) == b"\r\n"
            assert stream.read_until(b"\r\n\r\n") == b"data: o\r\n\r\n"
            r1 = post(port, url + "/xhr_send", '["x"]')
            assert (r1.status, r1.body) == (204, b"")
            assert stream.read_until(b"\r\n\r\n") == b'data: a["x"]\r\n\r\n'
            r1 = post(port, url + "/xhr_send", r'["  \u0000\n\r "]')
            assert (r1.status, r1.body) == (204, b"")
            assert stream.read_until(b"\r\n\r\n") == b'data: a["  \\u0000\\n\\r "]\r\n\r\n'

    def test_response_closed_after_response_limit(self, port):
        """EventSource.test_response_limit: one 4 KiB message passes the limit."""
        url = new_session()
        with open_stream(port, "GET", url + "/eventsource") as stream:
            assert stream.response.status == 200
            assert stream.read_exact(2) == b"\r\n"
            assert stream.read_until(b"\r\n\r\n") == b"data: o\r\n\r\n"
            msg = '"' + "x" * 4096 + '"'
            r1 = post(port, url + "/xhr_send", "[" + msg + "]")
            assert r1.status == 204
            assert stream.read_until(b"\r\n\r\n") == ("data: a[" + msg + "]\r\n\r\n").encode()
            stream.assert_ends()


# -- HtmlFile ----------------------------------------------------------------------------

HTMLFILE_HEAD = """<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.%s;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"""
HTMLFILE_OPEN = b'<script>\np("o");\n</script>\r\n'
HTMLFILE_END = b"\n</script>\r\n"


def htmlfile_stream(port: int, url: str, callback: str = "callback") -> tuple[Stream, bytes]:
    """An htmlfile request read up to and including its open frame; returns the
    stream and the prelude (the page head)."""
    stream = open_stream(port, "GET", f"{url}/htmlfile?c={callback}")
    try:
        assert stream.response.status == 200, stream.response
        data = stream.read_until(HTMLFILE_OPEN)
    except BaseException:
        stream.close()
        raise
    return stream, data[: -len(HTMLFILE_OPEN)]


class TestHtmlFile:
    """sockjs-protocol ``HtmlFile``: ``/*/*/htmlfile``."""

    def test_page_head_open_and_messages(self, port):
        """HtmlFile.test_transport: text/html, not cached, the page head padded past
        1 KiB naming the callback, then one ``<script>p("frame")</script>`` per frame."""
        url = new_session()
        stream, prelude = htmlfile_stream(port, url, "%63allback")
        with stream:
            r = stream.response
            assert content_type(r) == "text/html;charset=UTF-8"
            assert_not_cached(r)
            assert prelude.strip().decode() == HTMLFILE_HEAD % "callback"
            assert len(prelude) > 1024
            r1 = post(port, url + "/xhr_send", '["x"]')
            assert (r1.status, r1.body) == (204, b"")
            assert stream.read_until(HTMLFILE_END) == b'<script>\np("a[\\"x\\"]");\n</script>\r\n'

    def test_missing_callback_is_500(self, port):
        """HtmlFile.test_no_callback."""
        r = get(port, ECHO + "/a/a/htmlfile")
        assert r.status == 500
        assert b'"callback" parameter required' in r.body

    def test_invalid_callback_is_500(self, port):
        """HtmlFile.test_invalid_callback: characters outside ``[a-zA-Z0-9-_.]``."""
        # abc%0A: a trailing newline, which a pattern ending in "$" lets through.
        for callback in ("%20", "*", "abc(", "abc%28", "abc%0A"):
            r = get(port, ECHO + "/a/a/htmlfile?c=" + callback)
            assert r.status == 500, callback
            assert b'invalid "callback" parameter' in r.body

    def test_response_closed_after_response_limit(self, port):
        """HtmlFile.test_response_limit."""
        url = new_session()
        stream, prelude = htmlfile_stream(port, url)
        with stream:
            assert prelude
            msg = "x" * 4096
            r1 = post(port, url + "/xhr_send", '["' + msg + '"]')
            assert r1.status == 204
            expected = '<script>\np("a[\\"' + msg + '\\"]");\n</script>\r\n'
            assert stream.read_until(HTMLFILE_END) == expected.encode()
            stream.assert_ends()


# -- JSONP polling -----------------------------------------------------------------------


class TestJsonPolling:
    """sockjs-protocol ``JsonPolling``: ``/*/*/jsonp`` and ``/*/*/jsonp_send``."""

    def test_poll_and_send(self, port):
        """JsonPolling.test_transport: ``/**/callback("frame");``, not cached;
        jsonp_send answers 200 ``ok`` in text/plain (Konqueror mishandles 204)."""
        url = new_session()
        r = get(port, url + "/jsonp?c=%63allback")
        assert r.status == 200
        assert content_type(r) == "application/javascript;charset=UTF-8"
        assert_not_cached(r)
        assert r.body == b'/**/callback("o");\r\n'

        r = post(port, url + "/jsonp_send", "d=%5B%22x%22%5D", FORM)
        assert (r.status, r.body) == (200, b"ok")
        assert content_type(r) == "text/plain;charset=UTF-8"
        assert_not_cached(r)

        r = get(port, url + "/jsonp?c=%63allback")
        assert (r.status, r.body) == (200, b'/**/callback("a[\\"x\\"]");\r\n')

    def test_missing_callback_is_500(self, port):
        """JsonPolling.test_no_callback."""
        r = get(port, ECHO + "/a/a/jsonp")
        assert r.status == 500
        assert b'"callback" parameter required' in r.body

    def test_invalid_callback_is_500(self, port):
        """JsonPolling.test_invalid_callback."""
        for callback in ("%20", "*", "abc(", "abc%28", "abc%0A"):
            r = get(port, ECHO + "/a/a/jsonp?c=" + callback)
            assert r.status == 500, callback
            assert b'invalid "callback" parameter' in r.body

    def test_broken_and_missing_payload_are_500(self, port):
        """JsonPolling.test_invalid_json: a broken ``d``, and an empty body, empty
        ``d`` or no ``d`` at all."""
        url = new_session()
        assert get(port, url + "/jsonp?c=x").body == b'/**/x("o");\r\n'
        r = post(port, url + "/jsonp_send", "d=%5B%22x", FORM)
        assert r.status == 500
        assert b"Broken JSON encoding." in r.body
        for data in ("", "d=", "p=p"):
            r = post(port, url + "/jsonp_send", data, FORM)
            assert r.status == 500, data
            assert b"Payload expected." in r.body
        r = post(port, url + "/jsonp_send", "d=%5B%22b%22%5D", FORM)
        assert r.body == b"ok"
        r = get(port, url + "/jsonp?c=x")
        assert (r.status, r.body) == (200, b'/**/x("a[\\"b\\"]");\r\n')

    def test_form_and_plain_bodies_are_accepted(self, port):
        """JsonPolling.test_content_types: a form's ``d`` field, or a text/plain body
        taken as is (no percent-decoding)."""
        url = new_session()
        assert get(port, url + "/jsonp?c=x").body == b'/**/x("o");\r\n'
        assert post(port, url + "/jsonp_send", "d=%5B%22abc%22%5D", FORM).body == b"ok"
        r = post(port, url + "/jsonp_send", '["%61bc"]', {"Content-Type": "text/plain"})
        assert r.body == b"ok"
        r = get(port, url + "/jsonp?c=x")
        assert (r.status, r.body) == (200, b'/**/x("a[\\"abc\\",\\"%61bc\\"]");\r\n')

    def test_closed_session_serves_close_frame_repeatedly(self, port):
        """JsonPolling.test_close."""
        url = new_session(CLOSE)
        assert get(port, url + "/jsonp?c=x").body == b'/**/x("o");\r\n'
        for _ in range(2):
            assert get(port, url + "/jsonp?c=x").body == b'/**/x("c[3000,\\"Go away!\\"]");\r\n'

    def test_empty_frame_is_accepted(self, port):
        """JsonPolling.test_sending_empty_frame."""
        url = new_session()
        assert get(port, url + "/jsonp?c=x").body == b'/**/x("o");\r\n'
        assert post(port, url + "/jsonp_send", "d=%5B%5D", FORM).body == b"ok"
        assert post(port, url + "/jsonp_send", "d=%5B%22x%22%5D", FORM).body == b"ok"
        r = get(port, url + "/jsonp?c=x")
        assert (r.status, r.body) == (200, b'/**/x("a[\\"x\\"]");\r\n')


# -- JSESSIONID cookie -------------------------------------------------------------------


class TestJsessionidCookie:
    """sockjs-protocol ``JsessionidCookie``: the opt-in JSESSIONID cookie for sticky
    load balancers, on every HTTP session URL."""

    def test_info_announces_cookie_needed_without_setting_it(self, port):
        """JsessionidCookie.test_basic."""
        r = get(port, COOKIE + "/info")
        assert r.status == 200
        assert_no_cookie(r)
        assert json.loads(r.body)["cookie_needed"] is True

    def test_xhr_sets_dummy_or_echoes_client_cookie(self, port):
        """JsessionidCookie.test_xhr."""
        r = post(port, new_session(COOKIE) + "/xhr")
        assert (r.status, r.body) == (200, b"o\n")
        assert_cookie(r)
        r = post(port, new_session(COOKIE) + "/xhr", headers={"Cookie": "JSESSIONID=abcdef"})
        assert (r.status, r.body) == (200, b"o\n")
        assert_cookie(r, "abcdef")

    def test_xhr_streaming(self, port):
        """JsessionidCookie.test_xhr_streaming."""
        with open_stream(port, "POST", new_session(COOKIE) + "/xhr_streaming", body=b"") as stream:
            assert stream.response.status == 200
            assert_cookie(stream.response)

    def test_eventsource(self, port):
        """JsessionidCookie.test_eventsource."""
        with open_stream(port, "GET", new_session(COOKIE) + "/eventsource") as stream:
            assert stream.response.status == 200
            assert_cookie(stream.response)

    def test_htmlfile(self, port):
        """JsessionidCookie.test_htmlfile."""
        with open_stream(port, "GET", new_session(COOKIE) + "/htmlfile?c=%63allback") as stream:
            assert stream.response.status == 200
            assert_cookie(stream.response)

    def test_jsonp_and_jsonp_send(self, port):
        """JsessionidCookie.test_jsonp."""
        url = new_session(COOKIE)
        r = get(port, url + "/jsonp?c=%63allback")
        assert r.status == 200
        assert_cookie(r)
        assert r.body == b'/**/callback("o");\r\n'
        r = post(port, url + "/jsonp_send", "d=%5B%22x%22%5D", FORM)
        assert (r.status, r.body) == (200, b"ok")
        assert_cookie(r)


# -- Raw WebSocket -----------------------------------------------------------------------


class TestRawWebsocket:
    """sockjs-protocol ``RawWebsocket``: ``/websocket`` with no SockJS framing."""

    def test_echo_without_framing(self, port):
        """RawWebsocket.test_transport: no open frame; U+FFFF passes through."""
        with ws_connect(port, ECHO + "/websocket") as ws:
            ws.send("Hello world!\uffff")
            assert ws_recv(ws) == "Hello world!\uffff"

    def test_close_reason_go_away(self, port):
        """RawWebsocket.test_close: the session's close is a WebSocket close frame
        with reason ``Go away!`` (code 3000, not checked by the specification)."""
        with ws_connect(port, CLOSE + "/websocket") as ws:
            closed = ws_expect_closed(ws)
            assert closed.rcvd is not None, "no close frame"
            assert closed.rcvd.reason == "Go away!"
            assert closed.rcvd.code == 3000


# -- JSON Unicode encoding ---------------------------------------------------------------

# The characters a SockJS client escapes before sending (browsers mangle them on
# XHR), and those the server must send escaped: the specification's
# ``escapable_by_client`` and ``escapable_by_server``.
ESCAPABLE_BY_CLIENT = re.compile(
    "[\\\"\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0604\u070f\u17b4\u17b5\u2000-\u20ff\ufeff\ufff0-"
    "\uffff\x00-\x1f\ufffe\uffff\u0300-\u0333\u033d-\u0346\u034a-\u034c\u0350-\u0352\u0357-"
    "\u0358\u035c-\u0362\u0374\u037e\u0387\u0591-\u05af\u05c4\u0610-\u0617\u0653-\u0654\u0657"
    "-\u065b\u065d-\u065e\u06df-\u06e2\u06eb-\u06ec\u0730\u0732-\u0733\u0735-\u0736\u073a"
    "\u073d\u073f-\u0741\u0743\u0745\u0747\u07eb-\u07f1\u0951\u0958-\u095f\u09dc-\u09dd\u09df"
    "\u0a33\u0a36\u0a59-\u0a5b\u0a5e\u0b5c-\u0b5d\u0e38-\u0e39\u0f43\u0f4d\u0f52\u0f57\u0f5c"
    "\u0f69\u0f72-\u0f76\u0f78\u0f80-\u0f83\u0f93\u0f9d\u0fa2\u0fa7\u0fac\u0fb9\u1939-\u193a"
    "\u1a17\u1b6b\u1cda-\u1cdb\u1dc0-\u1dcf\u1dfc\u1dfe\u1f71\u1f73\u1f75\u1f77\u1f79\u1f7b"
    "\u1f7d\u1fbb\u1fbe\u1fc9\u1fcb\u1fd3\u1fdb\u1fe3\u1feb\u1fee-\u1fef\u1ff9\u1ffb\u1ffd"
    "\u2000-\u2001\u20d0-\u20d1\u20d4-\u20d7\u20e7-\u20e9\u2126\u212a-\u212b\u2329-\u232a"
    "\u2adc\u302b-\u302c\uaab2-\uaab3\uf900-\ufa0d\ufa10\ufa12\ufa15-\ufa1e\ufa20\ufa22\ufa25"
    "-\ufa26\ufa2a-\ufa2d\ufa30-\ufa6d\ufa70-\ufad9\ufb1d\ufb1f\ufb2a-\ufb36\ufb38-\ufb3c"
    "\ufb3e\ufb40-\ufb41\ufb43-\ufb44\ufb46-\ufb4e]"
)
ESCAPABLE_BY_SERVER = re.compile("[\x00-\x1f\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff]")


def killer_string(pattern: re.Pattern[str], start: int) -> str:
    """A JSON string literal of every BMP code point from ``start`` that ``pattern``
    matches, each written as a ``\\uXXXX`` escape."""
    return '"' + "".join(f"\\u{i:04x}" for i in range(start, 0x10000) if pattern.match(chr(i))) + '"'


CLIENT_KILLER_STRING = killer_string(ESCAPABLE_BY_CLIENT, 0)
SERVER_KILLER_STRING = killer_string(ESCAPABLE_BY_SERVER, 255)


class TestJSONEncoding:
    """sockjs-protocol ``JSONEncoding``: JSON Unicode encoding in both directions."""

    def test_server_escapes_what_browsers_mangle(self, port):
        """JSONEncoding.test_xhr_server_encodes: the server-escapable characters, sent
        raw, come back escaped exactly as ``\\uXXXX``."""
        url = new_session()
        assert post(port, url + "/xhr").body == b"o\n"
        payload = '["' + json.loads(SERVER_KILLER_STRING) + '"]'
        assert post(port, url + "/xhr_send", payload).status == 204
        r = post(port, url + "/xhr")
        assert r.status == 200
        received = r.body.strip()[2:-1]  # drop the a[ ] framing
        assert received.decode() == SERVER_KILLER_STRING

    def test_server_decodes_what_clients_escape(self, port):
        """JSONEncoding.test_xhr_server_decodes: the client-escapable characters, sent
        escaped, come back as the same characters (escaped or not)."""
        url = new_session()
        assert post(port, url + "/xhr").body == b"o\n"
        assert post(port, url + "/xhr_send", "[" + CLIENT_KILLER_STRING + "]").status == 204
        r = post(port, url + "/xhr")
        assert r.status == 200
        received = r.body.strip()[2:-1]
        assert json.loads(received) == json.loads(CLIENT_KILLER_STRING)


# -- Handling close ----------------------------------------------------------------------


class TestHandlingClose:
    """sockjs-protocol ``HandlingClose``: closing sessions and aborted requests."""

    def test_close_unlinks_the_request(self, port):
        """HandlingClose.test_close_frame: after the server closes a session, a new
        request gets the close frame rather than ``c[2010,...]``; both streaming
        responses end after the close frame."""
        url = new_session(CLOSE)
        with xhr_stream(port, url) as r1:
            assert r1.read_until(b"\n") == b"o\n"
            assert r1.read_until(b"\n") == GO_AWAY + b"\n"
            with xhr_stream(port, url) as r2:
                assert r2.read_until(b"\n") == GO_AWAY + b"\n"
                r1.assert_ends()
                r2.assert_ends()

    def test_second_receiver_gets_2010_and_ends(self, port):
        """HandlingClose.test_close_request."""
        url = new_session()
        with xhr_stream(port, url) as r1:
            assert r1.read_until(b"\n") == b"o\n"
            with xhr_stream(port, url) as r2:
                assert r2.read_until(b"\n") == ANOTHER_CONNECTION + b"\n"
                r2.assert_ends()

    def test_aborted_streaming_request_closes_session(self, port):
        """HandlingClose.test_abort_xhr_streaming: after the attached streaming
        request is aborted by the client, the next one gets a new session or
        ``c[1002,"Connection interrupted"]``: sockway keeps the closed session for
        ``disconnect_delay`` (5 s), so the latter."""
        url = new_session()
        r1 = xhr_stream(port, url)
        with r1:
            assert r1.read_until(b"\n") == b"o\n"
            with xhr_stream(port, url) as r2:
                assert r2.read_until(b"\n") == ANOTHER_CONNECTION + b"\n"
                r2.assert_ends()
        with xhr_stream(port, url) as r3:
            assert r3.read_until(b"\n") == INTERRUPTED + b"\n"

    def test_aborted_polling_request_closes_session(self, port, hanging):
        """HandlingClose.test_abort_xhr_polling: the same for xhr-polling."""
        url = new_session()
        assert post(port, url + "/xhr").body == b"o\n"
        poll = start_poll(port, url, hanging)
        assert post(port, url + "/xhr").body == ANOTHER_CONNECTION + b"\n"
        poll.close()
        r3 = post(port, url + "/xhr")
        assert r3.body == INTERRUPTED + b"\n"


# -- HTTP/1.0 and HTTP/1.1 ---------------------------------------------------------------


class TestHttp10:
    """sockjs-protocol ``Http10``: responses an HTTP/1.0 client can read."""

    def test_keep_alive_request_without_chunking(self, port):
        """Http10.test_synchronous: no Transfer-Encoding; either Content-Length (then
        keep-alive works, or the server closes) or Connection: close. sockway answers
        in HTTP/1.0 with a Content-Length and keeps the connection alive, as asked."""
        with Connection(port) as conn:
            conn.send_request("GET", ECHO, {"Connection": "Keep-Alive"}, version="1.0")
            r = conn.read_head()
            assert (r.status, r.version) == (200, "1.0")
            assert not r.header("Transfer-Encoding"), r.headers
            assert int(r.header("Content-Length") or 0) == len(GREETING), r.headers
            assert conn.read_exact(len(GREETING)) == GREETING
            assert (r.header("Connection") or "").lower() == "keep-alive", r.headers
            conn.send_request("GET", ECHO, {"Connection": "Keep-Alive"}, version="1.0")
            assert conn.read_head().status == 200

    def test_streaming_is_close_delimited(self, port):
        """Http10.test_streaming: neither Transfer-Encoding nor Content-Length; the
        body ends when the server closes the connection."""
        with Connection(port) as conn:
            conn.send_request("POST", new_session(CLOSE) + "/xhr_streaming",
                              {"Connection": "Keep-Alive"}, version="1.0")
            r = conn.read_head()
            assert r.status == 200
            assert not r.header("Transfer-Encoding"), r.headers
            assert not r.header("Content-Length"), r.headers
            assert conn.read_exact(2049) == b"h" * 2048 + b"\n"
            assert conn.read_exact(2) == b"o\n"
            assert conn.read_exact(19) == GO_AWAY + b"\n"
            assert conn.closed_by_peer()


class TestHttp11:
    """sockjs-protocol ``Http11``: keep-alive and chunked streaming."""

    def test_keep_alive_by_default(self, port):
        """Http11.test_synchronous: Connection absent or keep-alive; Content-Length
        or chunked; a second request on the same connection. sockway: no Connection
        header (keep-alive is HTTP/1.1's default) and a Content-Length."""
        with Connection(port) as conn:
            conn.send_request("GET", ECHO, {"Connection": "Keep-Alive"})
            r = conn.read_head()
            assert (r.status, r.version) == (200, "1.1")
            assert r.header("Connection") is None, r.headers
            assert not r.header("Transfer-Encoding"), r.headers
            assert int(r.header("Content-Length") or 0) == len(GREETING), r.headers
            assert conn.read_exact(len(GREETING)) == GREETING
            conn.send_request("GET", ECHO, {"Connection": "Keep-Alive"})
            assert conn.read_head().status == 200

    def test_streaming_is_chunked(self, port):
        """Http11.test_streaming: chunked, no Content-Length; prelude, open and close
        frames each in a chunk, then the last chunk."""
        with Connection(port) as conn:
            conn.send_request("POST", new_session(CLOSE) + "/xhr_streaming",
                              {"Connection": "Keep-Alive"})
            r = conn.read_head()
            assert r.status == 200
            assert r.chunked, r.headers
            assert not r.header("Content-Length"), r.headers
            assert conn.read_chunk()[:1] == b"h"
            assert conn.read_chunk() == b"o\n"
            assert conn.read_chunk() == GO_AWAY + b"\n"
            assert conn.read_chunk() == b""


# -- HTTP quirks (http-quirks.py) --------------------------------------------------------


class TestHttpQuirks:
    """sockjs-protocol ``http-quirks.py`` ``HttpQuirks``."""

    def test_post_without_content_length(self, port):
        """HttpQuirks.test_emptyContentLengthForPost: a POST with no Content-Length
        (an empty body) must work."""
        with Connection(port) as conn:
            conn.send_request("POST", new_session() + "/xhr", content_length=False)
            r = conn.read_head()
            body = conn.read_body(r, "POST")
        assert (r.status, body) == (200, b"o\n")


# -- Beyond the reference ----------------------------------------------------------------

HOSTILE = (
    "</script><script>alert(1)</script></SCRIPT <!-- a comment --> -->"
    " \"double\" 'single' back\\slash \\u0041 \u2028 \u2029 \U0001f600 &amp; <b>"
)
HTMLFILE_CHUNK_RE = re.compile(rb"<script>\np\((.*)\);\n</script>\r\n", re.S)
JSONP_BODY_RE = re.compile(rb"/\*\*/callback\((.*)\);\r\n", re.S)


_URI_RESERVED = frozenset(";/?:@&=+$,#")


def decode_uri(text: str) -> str:
    """JavaScript's ``decodeURI``, which sockjs-client applies to every EventSource
    event before parsing it: ``%XX`` sequences (UTF-8) are decoded except those of
    reserved characters; ValueError where JavaScript throws "URI malformed"."""
    def byte_at(i: int) -> int:
        digits = text[i + 1: i + 3]
        if text[i:i + 1] != "%" or len(digits) != 2 or not all(c in string.hexdigits for c in digits):
            raise ValueError(f"URI malformed at {i}: {text[i:i + 3]!r}")
        return int(digits, 16)

    out = []
    i = 0
    while i < len(text):
        if text[i] != "%":
            out.append(text[i])
            i += 1
            continue
        first = byte_at(i)
        if first < 0x80:
            out.append(text[i:i + 3] if chr(first) in _URI_RESERVED else chr(first))
            i += 3
            continue
        size = 2 if 0xC0 <= first < 0xE0 else 3 if 0xE0 <= first < 0xF0 else 4 if 0xF0 <= first < 0xF8 else 0
        if not size:
            raise ValueError(f"URI malformed at {i}")
        out.append(bytes(byte_at(i + 3 * k) for k in range(size)).decode("utf-8"))
        i += 3 * size
    return "".join(out)


def assert_script_safe(script: bytes) -> None:
    """Nothing in ``script`` can end its ``<script>`` element or start an HTML comment
    inside it, and U+2028/U+2029 (invalid in pre-ES2019 string literals) are escaped."""
    assert b"</script" not in script.lower(), script
    assert b"<!--" not in script, script
    text = script.decode("utf-8")
    assert "\u2028" not in text and "\u2029" not in text, script


def decode_js_frame(literal: bytes) -> str:
    """The SockJS frame a ``"..."`` JavaScript string literal evaluates to. The
    server writes JSON string literals, whose JavaScript value is their JSON value."""
    assert literal[:1] == b'"' and literal[-1:] == b'"', literal
    return json.loads(literal)


class TestBeyondReference:
    """Checks the reference suite does not make, for what sockway promises: content
    that could break out of the htmlfile/jsonp script survives intact and harmless;
    lone surrogates round-trip; callback names are bounded; eventsource works for
    sockjs-client from another origin and with any message text."""

    @pytest.mark.parametrize("ascii_only", [False, True], ids=["utf8-body", "escaped-body"])
    def test_htmlfile_delivers_script_breaking_text_intact(self, port, ascii_only):
        """Message text with ``</script>``, ``<!--``, ``-->``, quotes, backslashes,
        U+2028/U+2029 and an astral character: the htmlfile chunk cannot end its
        script element, and its ``p(...)`` argument decodes to the message."""
        url = new_session()
        stream, _ = htmlfile_stream(port, url)
        with stream:
            body = json.dumps([HOSTILE], ensure_ascii=ascii_only)
            assert post(port, url + "/xhr_send", body).status == 204
            chunk = stream.read_until(HTMLFILE_END)
            match = HTMLFILE_CHUNK_RE.fullmatch(chunk)
            assert match, chunk
            assert_script_safe(chunk[len(b"<script>"): -len(b"</script>\r\n")])
            frame = decode_js_frame(match.group(1))
            assert frame[:1] == "a"
            assert json.loads(frame[1:]) == [HOSTILE]

    @pytest.mark.parametrize("ascii_only", [False, True], ids=["utf8-body", "escaped-body"])
    def test_jsonp_delivers_script_breaking_text_intact(self, port, ascii_only):
        """The same message over jsonp-polling: ``callback("...")`` is script-safe and
        its argument decodes to the message."""
        url = new_session()
        assert get(port, url + "/jsonp?c=callback").body == b'/**/callback("o");\r\n'
        r = post(port, url + "/jsonp_send", json.dumps([HOSTILE], ensure_ascii=ascii_only),
                 {"Content-Type": "text/plain;charset=UTF-8"})
        assert (r.status, r.body) == (200, b"ok")
        r = get(port, url + "/jsonp?c=callback")
        assert r.status == 200
        match = JSONP_BODY_RE.fullmatch(r.body)
        assert match, r.body
        assert_script_safe(r.body)
        frame = decode_js_frame(match.group(1))
        assert frame[:1] == "a"
        assert json.loads(frame[1:]) == [HOSTILE]

    def test_lone_surrogates_round_trip_escaped_over_xhr(self, port):
        """A browser may send lone UTF-16 surrogates (escaped, as sockjs-client does);
        they come back as the same escapes. A valid escaped pair is one character."""
        url = new_session()
        assert post(port, url + "/xhr").body == b"o\n"
        messages = [r'"\ud800"', r'"\udfff"', r'"a\udc00\ud83db"', r'"\ud83d\ude00"']
        assert post(port, url + "/xhr_send", "[" + ",".join(messages) + "]").status == 204
        r = post(port, url + "/xhr")
        assert r.status == 200
        assert r.body.startswith(b'a["\\ud800","\\udfff","a\\udc00\\ud83db",'), r.body
        assert b"\xed" not in r.body  # no surrogate encoded as (invalid) UTF-8
        decoded = json.loads(r.body[1:].decode("utf-8"))
        assert decoded == ["\ud800", "\udfff", "a\udc00\ud83db", "\U0001f600"]

    def test_lone_surrogate_round_trips_escaped_over_websocket(self, port):
        """The same over the websocket transport."""
        with ws_connect(port, new_session() + "/websocket") as ws:
            assert ws_recv(ws) == "o"
            ws.send(r'["\ud800"]')
            assert ws_recv(ws) == r'a["\ud800"]'

    @pytest.mark.parametrize("transport", ["htmlfile", "jsonp"])
    def test_callback_limits_and_exact_errors(self, port, transport):
        """Callbacks of 1 to 256 characters from ``[a-zA-Z0-9_.-]`` are accepted;
        longer ones or other characters get 500 ``invalid "callback" parameter``; a
        missing one gets 500 ``"callback" parameter required``."""
        r = get(port, f"{new_session()}/{transport}")
        assert (r.status, r.body) == (500, b'"callback" parameter required')
        bad = ["a" * 257, "%20", "*", "abc(", "abc%28", "a%22b", "a%3Cb", "a;b", "a%0Ab",
               "%E2%80%A8", "caf%C3%A9", "a/b", "a=b" + "c" * 300]
        for callback in bad:
            r = get(port, f"{new_session()}/{transport}?c={callback}")
            assert (r.status, r.body) == (500, b'invalid "callback" parameter'), callback
        good = "aZ09_.-" + "x" * 249
        assert len(good) == 256
        with open_stream(port, "GET", f"{new_session()}/{transport}?c={good}") as stream:
            assert stream.response.status == 200
            if transport == "jsonp":
                assert stream.read_until(b"\r\n") == f'/**/{good}("o");\r\n'.encode()
            else:
                prelude = stream.read_until(HTMLFILE_OPEN)
                assert f"var c = parent.{good};".encode() in prelude

    def test_eventsource_answers_cross_origin_requests(self, port):
        """sockjs-client uses EventSource from other origins as well (sockjs-node sends
        CORS headers on it): the origin is echoed with credentials, or ``*``."""
        with open_stream(port, "GET", new_session() + "/eventsource", {"Origin": "test"}) as stream:
            assert stream.response.status == 200
            assert_cors(stream.response, "test")
        with open_stream(port, "GET", new_session() + "/eventsource") as stream:
            assert stream.response.status == 200
            assert_cors(stream.response)

    def test_eventsource_data_survives_the_clients_decode_uri(self, port):
        """sockjs-client runs ``decodeURI`` on each EventSource event: percent signs in
        messages must reach the application unchanged, never as an escape the client
        decodes ("%41" read as "A") or rejects ("URI malformed")."""
        url = new_session()
        tricky = ["%", "100%", "%41", "%25", "%E2%82%AC", "%zz", "a%2Fb", "%%%", "% \u2028 \U0001f600"]
        with open_stream(port, "GET", url + "/eventsource") as stream:
            assert stream.read_exact(2) == b"\r\n"
            assert stream.read_until(b"\r\n\r\n") == b"data: o\r\n\r\n"
            assert post(port, url + "/xhr_send", json.dumps(tricky, ensure_ascii=False)).status == 204
            event = stream.read_until(b"\r\n\r\n")
            assert event.startswith(b"data: ") and event.endswith(b"\r\n\r\n"), event
            data = decode_uri(event[len(b"data: "): -4].decode("utf-8"))
            assert data[:1] == "a"
            assert json.loads(data[1:]) == tricky

    @pytest.mark.parametrize("transport", ["xhr_send", "jsonp_send"])
    def test_send_body_arriving_in_pieces(self, port, transport):
        """A send request's body that reaches the server in several TCP segments (a
        slow uplink) is read whole, not cut at what had arrived first."""
        url = new_session()
        poll = "/xhr" if transport == "xhr_send" else "/jsonp?c=x"
        if transport == "xhr_send":
            assert post(port, url + poll).body == b"o\n"
        else:
            assert get(port, url + poll).body == b'/**/x("o");\r\n'
        message = "piece " * 200
        body = json.dumps([message]).encode()
        with Connection(port) as conn:
            conn.send_request("POST", f"{url}/{transport}", {"Content-Length": str(len(body))},
                              content_length=False)
            for start in range(0, len(body), 400):
                conn.send(body[start:start + 400])
                time.sleep(0.05)
            r = conn.read_head()
            r.body = conn.read_body(r, "POST")
        assert (r.status, r.body) == ((204, b"") if transport == "xhr_send" else (200, b"ok")), (r.status, r.body)
        if transport == "xhr_send":
            received = post(port, url + poll).body
            assert json.loads(received[1:]) == [message]
        else:
            received = get(port, url + poll).body
            assert received.startswith(b'/**/x("') and received.endswith(b'");\r\n'), received
            assert json.loads(json.loads(received[6:-4])[1:]) == [message]
