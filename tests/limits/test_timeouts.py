"""Every phase in which a client makes the gateway wait has a timeout (shortened here
to 1 s): the first request head, the next head on a keep-alive connection, a request
body (SockJS xhr_send, the HTTP API), the hixie-76 key bytes, a response the client
does not read (a SockJS poll), and the TLS handshake."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest
from attack import closed_by_peer, open_descriptors, problems, tcp_stats

from support import GatewayProcess, config_gateway, drain, free_port, require_program, wait_for

T = 1.0
CONFIG = f"""
[server]
head_timeout = {T}
keepalive_timeout = {T}
body_timeout = {T}
send_timeout = {T}
sweep_interval = 0.1
socket_send_buffer = 65536

[api]
key = "k"

[[endpoint]]
prefix = "/echo"
mode = "echo"
"""


@pytest.fixture(scope="module")
def gw():
    with config_gateway(CONFIG) as proc:
        yield proc
        assert problems(proc.output()) == []


def raw(gw, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def closed_within(sock: socket.socket, low: float, high: float) -> bytes:
    """Everything the server sends until it closes the connection, which must happen
    between ``low`` and ``high`` seconds from now."""
    start = time.monotonic()
    data = drain(sock, high)
    took = time.monotonic() - start
    assert low <= took < high, (took, data)
    return data


def test_a_silent_connection_is_closed_after_head_timeout(gw):
    sock = raw(gw)
    assert closed_within(sock, T * 0.8, T + 1.5) == b""


def test_a_half_sent_head_gets_408(gw):
    sock = raw(gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    data = closed_within(sock, T * 0.8, T + 1.5)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert data.endswith(b"The request head did not arrive within 1 s.\n")


def test_a_trickled_head_does_not_postpone_the_deadline(gw):
    sock = raw(gw, b"G")
    start = time.monotonic()
    sock.settimeout(0.2)
    answer = b""
    while time.monotonic() - start < T + 1.5:
        try:
            sock.sendall(b"E")  # a byte every 0.2 s, never the end of the head
            answer += sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if answer.endswith(b"s.\n"):
            break
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert T * 0.8 <= time.monotonic() - start < T + 1.5


def test_the_next_head_on_a_keepalive_connection(gw):
    """After a response, the next head must be complete within keepalive_timeout; a
    half-sent one does not keep the connection."""
    sock = raw(gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while b"\r\n\r\n" not in first or not first.endswith(b"}"):
        first += sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert closed_within(sock, T * 0.8, T + 1.5) == b""


def test_a_slow_sockjs_send_body_gets_408(gw):
    session = "/echo/000/slowbody/"
    with urllib.request.urlopen(urllib.request.Request(gw.url + session + "xhr", method="POST"), timeout=5) as r:
        assert r.read() == b"o\n"
    sock = raw(gw, (f"POST {session}xhr_send HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                    "Content-Length: 100\r\n\r\n[\"only part").encode())
    data = closed_within(sock, T * 0.8, T + 1.5)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert data.endswith(b"The body did not arrive within 1 s.\n")


def test_a_slow_api_body_gets_408(gw):
    sock = raw(gw, (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"channel\": "))
    data = closed_within(sock, T * 0.8, T + 1.5)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert json.loads(body) == {"error": {"code": "timeout", "message": "the body did not arrive within 1 s"}}


def test_the_hixie76_key_bytes_must_follow_within_head_timeout(gw):
    sock = raw(gw, (b"GET /echo/000/nokey/websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                    b"Upgrade: WebSocket\r\nSec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\n"
                    b"Sec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\n\r\n"))
    data = closed_within(sock, T * 0.8, T + 1.5)
    assert data.startswith(b"HTTP/1.1 101 WebSocket Protocol Handshake\r\n")  # then nothing
    assert data.endswith(b"\r\n\r\n")


def test_a_poll_that_is_not_read_is_aborted_after_send_timeout(gw):
    """A SockJS poll whose client does not read its answer (here 800 KB queued by the
    echo endpoint) holds the connection only send_timeout."""
    session = "/echo/000/noreader/"
    with urllib.request.urlopen(urllib.request.Request(gw.url + session + "xhr", method="POST"), timeout=5) as r:
        assert r.read() == b"o\n"
    for _ in range(4):
        body = json.dumps(["x" * 200_000]).encode()
        request = urllib.request.Request(gw.url + session + "xhr_send", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 204
    before = tcp_stats(gw.url)["send_timeouts"]
    assert wait_for(lambda: tcp_stats(gw.url)["open"] == 1, 5)  # only the request asking
    baseline = open_descriptors(gw.proc.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(f"POST {session}xhr HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    try:
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 2, 5)
        start = time.monotonic()
        assert wait_for(lambda: tcp_stats(gw.url)["send_timeouts"] == before + 1, T + 3)
        assert time.monotonic() - start >= T * 0.8
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 1, 2)
        assert wait_for(lambda: open_descriptors(gw.proc.pid) == baseline, 2)
    finally:
        sock.close()


def test_a_tls_handshake_is_bounded_by_head_timeout(tmp_path):
    """A client that connects to a TLS listener and never sends its ClientHello is
    closed after head_timeout, and counted from its accept like any other."""
    openssl = require_program("openssl", "apt-get install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    toml = (f'[server]\ncert = "{cert}"\nkey = "{key}"\nhead_timeout = {T}\nsweep_interval = 0.1\n'
            'max_tcp_per_address = 2\n[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n')
    context = ssl.create_default_context(cafile=str(cert))
    config = tmp_path / "tls.toml"
    config.write_text(toml)
    port = free_port()
    tls_gw = GatewayProcess(["serve", "--config", str(config), "--port", str(port)], port)
    try:
        assert wait_for(lambda: tls_get(port, context) is not None, 15), tls_gw.output()
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        opened = time.monotonic()
        # The third from the same address is refused before any TLS work.
        assert closed_by_peer(socket.create_connection(("127.0.0.1", port), timeout=5), 0.5)
        for sock in silent:
            assert drain(sock, T + 1.5) == b""
        assert T * 0.8 <= time.monotonic() - opened < T + 1.5
        assert tls_get(port, context).startswith(b"HTTP/1.1 200 ")
    finally:
        assert tls_gw.stop() == 0
    assert problems(tls_gw.output()) == []


def tls_get(port: int, context: ssl.SSLContext) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain, \
                context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return drain(tls, 5)
    except OSError:
        return None
