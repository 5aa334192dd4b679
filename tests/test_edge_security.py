"""Edge security: the origin allow-list (cross-site WebSocket hijacking), trusted
proxies, TLS, connection and size limits — each with a clear error when hit."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import websockets
from aiohttp.test_utils import make_mocked_request

from sockway.edge.security import ProxyPolicy
from support import (
    HIXIE_KEY1,
    HIXIE_KEY2,
    GatewayProcess,
    config_gateway,
    drain,
    endpoint_connections,
    free_port,
    require_program,
    wait_for,
)


def ws_status(url: str, origin: str | None) -> int:
    """Status of a WebSocket handshake: 101, or the HTTP status of the refusal."""

    async def attempt() -> int:
        headers = {"Origin": origin} if origin else None
        try:
            async with websockets.connect(url, origin=None, additional_headers=headers,
                                          open_timeout=5):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    return asyncio.run(attempt())


def http_status(url: str, headers: dict | None = None, method: str = "GET", data=None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


ECHO = '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n'


def test_default_allows_same_origin_and_no_origin_only():
    with config_gateway(ECHO) as gw:
        url = gw.ws_url + "/echo/websocket"
        assert ws_status(url, None) == 101
        assert ws_status(url, gw.url) == 101
        assert ws_status(url, "http://evil.example") == 403
        assert ws_status(gw.ws_url + "/echo/000/abc/websocket", "http://evil.example") == 403
        status, body = http_status(gw.url + "/echo/info", {"Origin": "http://evil.example"})
        assert status == 403 and b"allowed_origins" in body
        status, _ = http_status(gw.url + "/echo/000/s1/xhr", {"Origin": "http://evil.example"}, "POST")
        assert status == 403
        assert http_status(gw.url + "/echo/info", {"Origin": gw.url})[0] == 200


WILDCARD_ALLOWED = ["https://chat.example.com", "https://a.b.example.com", "https://chat.example.com:443",
                    "http://app.test:3000"]
WILDCARD_REFUSED = [
    # A wildcard matched as text (fnmatch) let these through: "*" ran across "/", "?",
    # "#", "\\" and "@".
    "https://evil.test/.example.com", "https://evil.test?.example.com", "https://evil.test#.example.com",
    "https://evil.test\\.example.com", "https://evil.test@chat.example.com",
    # Not whole labels of example.com, another port or scheme, a path, a trailing dot.
    "https://example.com", "https://evilexample.com", "https://example.com.evil.test",
    "https://chat.example.com:8443", "http://chat.example.com", "https://chat.example.com/",
    "https://chat.example.com.", "http://app.test:3001", "http://app.test", "null",
]


def test_allow_list_with_wildcards_and_per_endpoint_override():
    toml = ('[server]\nallowed_origins = ["https://*.example.com", "http://app.test:3000"]\n' + ECHO
            + '[[endpoint]]\nprefix = "/open"\nmode = "echo"\nallowed_origins = ["*"]\n')
    with config_gateway(toml) as gw:
        url = gw.ws_url + "/echo/websocket"
        for origin in WILDCARD_ALLOWED:
            assert ws_status(url, origin) == 101, origin
            assert http_status(gw.url + "/echo/info", {"Origin": origin})[0] == 200, origin
        for origin in WILDCARD_REFUSED:
            assert ws_status(url, origin) == 403, origin
            assert http_status(gw.url + "/echo/info", {"Origin": origin})[0] == 403, origin
            assert http_status(gw.url + "/echo/000/w1/xhr", {"Origin": origin}, "POST")[0] == 403, origin
        assert ws_status(gw.ws_url + "/open/websocket", "https://anything.test") == 101
        assert ws_status(gw.ws_url + "/open/websocket", "https://evil.test/.example.com") == 101


def test_bad_allow_list_entries_are_configuration_errors(tmp_path):
    """An entry that is not an origin (a path, "null", a wildcard that is not whole
    leading labels) stops the gateway from starting, saying which and why."""
    configs = {
        "https://app.example.com/chat": '[server]\nallowed_origins = ["https://app.example.com/chat"]\n' + ECHO,
        "https://*.example.com/x": '[server]\nallowed_origins = ["https://*.example.com/x"]\n' + ECHO,
        "null": ECHO + 'allowed_origins = ["null"]\n',
        "https://a.*.example.com": ECHO + 'allowed_origins = ["https://a.*.example.com"]\n',
    }
    for entry, toml in configs.items():
        path = tmp_path / "bad.toml"
        path.write_text(toml)
        result = subprocess.run([sys.executable, "-m", "sockway", "serve", "--config", str(path),
                                 "--port", str(free_port())], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (entry, result.stderr)
        assert result.stderr.startswith("sockway: configuration error: "), result.stderr
        assert "allowed_origins" in result.stderr and repr(entry) in result.stderr, result.stderr


def test_forwarded_for_is_believed_only_from_trusted_proxies():
    def request(peer: str, xff: str | None):
        headers = {"X-Forwarded-For": xff} if xff else {}
        req = make_mocked_request("GET", "/", headers=headers)
        req.transport.get_extra_info = (
            lambda name, default=None: (peer, 1234) if name == "peername" else default
        )
        return req

    proxies = ProxyPolicy(["10.0.0.0/8", "127.0.0.1"])
    assert proxies.client_address(request("203.0.113.9", "1.2.3.4")) == "203.0.113.9"
    assert proxies.client_address(request("127.0.0.1", "1.2.3.4")) == "1.2.3.4"
    assert proxies.client_address(request("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.1.1")) == "1.2.3.4"
    assert proxies.client_address(request("127.0.0.1", None)) == "127.0.0.1"
    with pytest.raises(ValueError):
        ProxyPolicy(["not-an-address"])


def test_connection_limit_refuses_with_503_and_recovers():
    toml = "[server]\nmax_connections = 2\n" + ECHO

    async def scenario(gw) -> None:
        url = gw.ws_url + "/echo/websocket"
        a = await websockets.connect(url, open_timeout=5)
        b = await websockets.connect(url, open_timeout=5)
        with pytest.raises(websockets.InvalidStatus) as exc:
            await websockets.connect(url, open_timeout=5)
        assert exc.value.response.status_code == 503
        assert b"Too many connections" in exc.value.response.body
        status, _ = await asyncio.to_thread(http_status, gw.url + "/echo/000/new/xhr", None, "POST")
        assert status == 503
        await a.close()
        assert await asyncio.to_thread(wait_for, lambda: endpoint_connections(gw, "/echo") == 1, 5)
        c = await websockets.connect(url, open_timeout=5)
        await c.send("still serving")
        assert await asyncio.wait_for(c.recv(), 5) == "still serving"
        await b.close()
        await c.close()

    with config_gateway(toml) as gw:
        asyncio.run(scenario(gw))


def test_sockjs_message_size_limit_gives_413():
    toml = '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\nmax_message_size = 1000\n'
    with config_gateway(toml) as gw:
        base = gw.url + "/echo/000/big"
        assert http_status(base + "/xhr", method="POST")[1] == b"o\n"
        status, body = http_status(base + "/xhr_send", method="POST",
                                   data=json.dumps(["x" * 1500]).encode())
        assert (status, body) == (413, b"Message over the 1000 byte limit.\n")
        # ... and the session is closed with 1009: its poll says so, a send finds nothing.
        assert http_status(base + "/xhr", method="POST")[1] == b'c[1009,"Message too big"]\n'
        assert http_status(base + "/xhr_send", method="POST", data=b'["z"]')[0] == 404
        # A body longer than any message under the limit can take (escaped) is refused
        # before it is read whole.
        base = gw.url + "/echo/000/bigger"
        assert http_status(base + "/xhr", method="POST")[1] == b"o\n"
        status, body = http_status(base + "/xhr_send", method="POST", data=b'["' + b"y" * 5000 + b'"]')
        assert (status, body) == (413, b"Payload over the 1000 byte limit.\n")


def test_tls(tmp_path):
    openssl = require_program("openssl", "apt-get install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    toml = f'[server]\ncert = "{cert}"\nkey = "{key}"\n' + ECHO
    context = ssl.create_default_context(cafile=str(cert))

    async def scenario(port: int) -> str:
        async with websockets.connect(f"wss://127.0.0.1:{port}/echo/websocket", ssl=context,
                                      open_timeout=5) as ws:
            await ws.send("over TLS")
            return await asyncio.wait_for(ws.recv(), 5)

    path = tmp_path / "tls.toml"
    path.write_text(toml)
    port = free_port()
    proc = GatewayProcess(["serve", "--config", str(path), "--port", str(port)], port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/echo", context=context,
                                            timeout=1) as r:
                    assert r.read() == b"Welcome to SockJS!\n"
                    break
            except OSError:
                assert time.monotonic() < deadline, proc.output()
                time.sleep(0.1)
        assert asyncio.run(scenario(port)) == "over TLS"
    finally:
        assert proc.stop() == 0


JSONP_TOML = ('[server]\nallowed_origins = ["http://app.test:3000"]\n' + ECHO
              + '[[endpoint]]\nprefix = "/same"\nmode = "echo"\nallowed_origins = []\n'
              + '[[endpoint]]\nprefix = "/open"\nmode = "echo"\nallowed_origins = ["*"]\n'
              + '[[endpoint]]\nprefix = "/public"\nmode = "echo"\njsonp_without_referer = true\n')
OPEN_FRAME = b'/**/cb("o");\r\n'


def test_jsonp_is_judged_by_its_referer_under_an_allow_list():
    """A <script> load carries no Origin, and any page can read what it loads: under an
    allow-list (the same-origin default too) a jsonp poll needs a Referer of an allowed
    origin, unless the endpoint sets jsonp_without_referer; with "*" anything goes."""
    sessions = iter(range(1000))

    def jsonp(prefix: str, headers: dict) -> tuple[int, bytes]:
        return http_status(f"{gw.url}{prefix}/000/j{next(sessions)}/jsonp?c=cb", headers)

    refused = (403, b"jsonp polling needs a Referer of a page whose origin is in this server's allowed_origins.\n")
    with config_gateway(JSONP_TOML) as gw:
        own_page = gw.url + "/index.html"
        # An explicit list: its origins, and the gateway's own.
        assert jsonp("/echo", {}) == refused
        assert jsonp("/echo", {"Referer": "http://app.test:3000/chat.html"}) == (200, OPEN_FRAME)
        assert jsonp("/echo", {"Referer": own_page}) == (200, OPEN_FRAME)
        assert jsonp("/echo", {"Referer": "http://evil.test/"}) == refused
        assert jsonp("/echo", {"Referer": "http://evil.test/?http://app.test:3000/"}) == refused
        assert jsonp("/echo", {"Referer": "http://app.test:3000.evil.test/"}) == refused
        assert jsonp("/echo", {"Origin": "http://app.test:3000"}) == (200, OPEN_FRAME)
        status, _ = jsonp("/echo", {"Origin": "http://evil.test", "Referer": "http://app.test:3000/"})
        assert status == 403  # an Origin, when there is one, decides
        # The default: same origin only.
        assert jsonp("/same", {}) == refused
        assert jsonp("/same", {"Referer": own_page}) == (200, OPEN_FRAME)
        assert jsonp("/same", {"Referer": "http://app.test:3000/"}) == refused
        # "*": any page may read it.
        assert jsonp("/open", {}) == (200, OPEN_FRAME)
        assert jsonp("/open", {"Referer": "http://evil.test/"}) == (200, OPEN_FRAME)
        # jsonp_without_referer: no Referer is let through, a foreign one still is not.
        assert jsonp("/public", {}) == (200, OPEN_FRAME)
        assert jsonp("/public", {"Referer": "http://evil.test/"}) == refused
        # Other requests without an Origin are programs' (or same-origin GETs): let through.
        assert http_status(gw.url + "/echo/000/x1/xhr", method="POST") == (200, b"o\n")
        assert http_status(gw.url + "/echo/info")[0] == 200
        output = gw.output()
        assert "Traceback" not in output and " ERROR " not in output, output[-3000:]


def test_iframe_page_and_htmlfile_may_be_framed_by_allowed_origins_only():
    """The iframe page runs the iframe transports for whichever page embeds it, on the
    gateway's origin: Content-Security-Policy frame-ancestors names who may embed it
    (and htmlfile), unless any origin may ("*")."""
    with config_gateway(JSONP_TOML) as gw:
        expected = {"/echo": "frame-ancestors 'self' http://app.test:3000", "/same": "frame-ancestors 'self'",
                    "/open": None}
        for prefix, policy in expected.items():
            with urllib.request.urlopen(gw.url + prefix + "/iframe.html", timeout=5) as r:
                assert r.headers.get("Content-Security-Policy") == policy, prefix
                etag = r.headers["ETag"]
            status, _ = http_status(gw.url + prefix + "/iframe.html", {"If-None-Match": etag})
            assert status == 304
            request = urllib.request.Request(gw.url + prefix + "/iframe.html", headers={"If-None-Match": etag})
            with pytest.raises(urllib.error.HTTPError) as not_modified:
                urllib.request.urlopen(request, timeout=5)
            assert not_modified.value.headers.get("Content-Security-Policy") == policy, prefix
            with urllib.request.urlopen(f"{gw.url}{prefix}/000/h{prefix[1:]}/htmlfile?c=cb", timeout=5) as r:
                assert r.headers["Content-Type"] == "text/html; charset=UTF-8"
                assert r.headers.get("Content-Security-Policy") == policy, prefix


def test_refused_origins_are_logged_a_few_times_a_minute():
    """Each refusal says which endpoint refused which origin, and what is allowed: one
    line, no traceback, at most five a minute per endpoint however many come."""
    with config_gateway(ECHO) as gw:
        assert ws_status(gw.ws_url + "/echo/websocket", "http://evil.example") == 403
        assert http_status(gw.url + "/echo/000/l1/jsonp?c=cb", {"Referer": "http://evil.example/x"})[0] == 403
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:  # hixie-76
            sock.sendall(f"GET /echo/000/l2/websocket HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
                         "Connection: Upgrade\r\nUpgrade: WebSocket\r\nOrigin: http://evil.example\r\n"
                         f"Sec-WebSocket-Key1: {HIXIE_KEY1}\r\nSec-WebSocket-Key2: {HIXIE_KEY2}\r\n\r\n".encode())
            assert drain(sock, 5).startswith(b"HTTP/1.1 403 ")
        for _ in range(40):
            assert http_status(gw.url + "/echo/info", {"Origin": "http://evil.example:8000"})[0] == 403
        assert http_status(gw.url + "/echo/info", {"Origin": gw.url})[0] == 200  # a marker: all came before it
        output = gw.output()
        lines = [line for line in output.splitlines() if "refused" in line]
        assert len(lines) == 5, output
        assert "WARNING sockway.edge: /echo: raw_websocket request from 127.0.0.1 refused: " \
               "Origin 'http://evil.example'; allowed: same origin only" in lines[0]
        assert "/echo: jsonp request from 127.0.0.1 refused: Referer 'http://evil.example/x'" in lines[1]
        assert "/echo: hixie-76 websocket request from 127.0.0.1 refused: Origin 'http://evil.example'" in lines[2]
        assert "/echo: info request from 127.0.0.1 refused: Origin 'http://evil.example:8000'" in lines[3]
        assert "Traceback" not in output


def test_header_values_that_are_not_utf8_get_clear_answers():
    """Every header the edge reads, with bytes that are not UTF-8 (aiohttp hands them
    over as lone surrogates): a clear status, never a 500 or a traceback. A cookie that
    is not a cookie value is not echoed; an origin that is not one is refused."""
    toml = ('[server]\ntrusted_proxies = ["127.0.0.1"]\n[api]\nkey = "k"\n'
            '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\ncookie_needed = true\n'
            '[[endpoint]]\nprefix = "/open"\nmode = "echo"\ncookie_needed = true\nallowed_origins = ["*"]\n')
    handshake = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    with config_gateway(toml) as gw:
        host = f"Host: 127.0.0.1:{gw.port}\r\n".encode()
        cases = [
            (b"POST /echo/000/c1/xhr", b"Cookie: JSESSIONID=a\xffb\r\n", b"200", b"Set-Cookie: JSESSIONID=dummy;"),
            (b"POST /echo/000/c2/xhr", b"Cookie: JSESSIONID=ab\r\n", b"200", b"Set-Cookie: JSESSIONID=ab;"),
            (b"GET /open/info", b"Origin: http://\xff\r\n", b"200", b""),
            (b"GET /echo/info", b"Origin: http://\xff\r\n", b"403", b"allowed_origins"),
            (b"GET /echo/info", b"Origin: http://127.0.0.1\xff\r\n", b"403", b"allowed_origins"),
            (b"OPTIONS /open/000/c3/xhr", b"Origin: http://a\r\nAccess-Control-Request-Headers: \xff\r\n", b"204", b""),
            (b"GET /echo/000/c4/jsonp?c=cb", b"Referer: http://\xff/\r\n", b"403", b"jsonp polling needs"),
            (b"POST /echo/000/c5/xhr", b"X-Forwarded-For: \xff, 1.2.3.4\xfe\r\n", b"200", b"o\n"),
            (b"GET /echo/info", b"X-Forwarded-Host: \xff\r\nOrigin: http://127.0.0.1\r\n", b"403", b"allowed_origins"),
            (b"GET /echo/websocket", handshake + b"Sec-WebSocket-Key: \xff\xff\r\n", b"400", b"Sec-WebSocket-Key"),
            (b"GET /echo/websocket", handshake + key + b"Sec-WebSocket-Protocol: \xff\r\n", b"400", b"Protocol"),
            (b"GET /echo/websocket", b"Upgrade: websocket\xff\r\nConnection: Upgrade\r\n", b"400", b"Upgrade"),
            (b"GET /echo/iframe.html", b"If-None-Match: \xff\r\n", b"200", b"SockJS"),
            (b"GET /metrics", b"Accept: \xff\r\n", b"200", b"sockway_connections"),
            (b"GET /api/stats", b"Authorization: Bearer \xff\r\n", b"401", b"unauthorized"),
        ]
        for request_line, headers, status, expected in cases:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
                sock.sendall(request_line + b" HTTP/1.1\r\n" + host + headers
                             + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                answer = drain(sock, 5)
            assert answer.startswith(b"HTTP/1.1 " + status + b" "), (request_line, headers, answer[:300])
            assert expected in answer, (request_line, headers, answer[:600])
        output = gw.output()
        assert "Traceback" not in output and " ERROR " not in output, output[-3000:]
