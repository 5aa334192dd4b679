"""Edge security: the origin allow-list (cross-site WebSocket hijacking), trusted
proxies, TLS, connection and size limits — each with a clear error when hit."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import websockets
from aiohttp.test_utils import make_mocked_request

from sockway.edge.security import OriginPolicy, ProxyPolicy
from support import GatewayProcess, config_gateway, endpoint_connections, free_port, require_program, wait_for


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


def test_allow_list_with_wildcards_and_per_endpoint_override():
    toml = ('[server]\nallowed_origins = ["https://*.example.com", "http://app.test:3000"]\n' + ECHO
            + '[[endpoint]]\nprefix = "/open"\nmode = "echo"\nallowed_origins = ["*"]\n')
    with config_gateway(toml) as gw:
        url = gw.ws_url + "/echo/websocket"
        assert ws_status(url, "https://chat.example.com") == 101
        assert ws_status(url, "http://app.test:3000") == 101
        assert ws_status(url, "https://example.com.evil.test") == 403
        assert ws_status(url, "http://app.test:3001") == 403
        assert ws_status(gw.ws_url + "/open/websocket", "https://anything.test") == 101


def test_origin_policy_unit():
    policy = OriginPolicy([])
    assert policy.allows(None, "http://h:1")
    assert policy.allows("http://h:1", "http://h:1")
    assert not policy.allows("http://h:2", "http://h:1")
    assert OriginPolicy(["*"]).allows("null", "http://h:1")


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
