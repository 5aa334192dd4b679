"""Bad input costs the gateway less to log than it cost the sender to send: a clear
status, at most one rate-limited warning line per bad request, never a traceback; and a
client that leaves in the middle of a response is not logged at all."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from attack import problems, tcp_stats

from support import config_gateway, drain, wait_for

CONFIG = '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n'
GOOD_KEY1 = "4 @1  46546xW%0l 1 5"
GOOD_KEY2 = "12998 5 Y3 1  .P00"


@pytest.fixture
def gw():
    with config_gateway(CONFIG) as proc:
        yield proc


def exchange(gw, data: bytes, then: bytes = b"", timeout: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sock:
        sock.sendall(data)
        if then:
            time.sleep(0.1)
            sock.sendall(then)
        return drain(sock, timeout)


def warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line]


def hixie(path: str, key1: str | None, key2: str | None, extra: str = "") -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n{extra}"
    if key1 is not None:
        head += f"Sec-WebSocket-Key1: {key1}\r\n"
    if key2 is not None:
        head += f"Sec-WebSocket-Key2: {key2}\r\n"
    return (head + "\r\n").encode("latin-1")


MALFORMED_HIXIE = {
    # A key number over 2**32 - 1: struct.error after the 101 before.
    "key too large": (hixie("/echo/000/a/websocket", "99999999999 1", GOOD_KEY2),
                      b"Sec-WebSocket-Key header's number is over 2**32 - 1"),
    "no spaces": (hixie("/echo/000/b/websocket", "12345", GOOD_KEY2), b"has no spaces"),
    "not a multiple": (hixie("/echo/000/c/websocket", "7 a 5", GOOD_KEY2), b"not a multiple of its spaces"),
    "no key2": (hixie("/echo/000/d/websocket", GOOD_KEY1, None), b"has no spaces"),
    "huge number": (hixie("/echo/000/e/websocket", "9" * 5000 + " x", GOOD_KEY2), b"number is too large"),
    "not sockjs": (hixie("/echo/websocket", GOOD_KEY1, GOOD_KEY2),
                   b"accepted only by GET on a SockJS websocket URL"),
    "bad header": (hixie("/echo/000/f/websocket", GOOD_KEY1, GOOD_KEY2, "no colon here\r\n"),
                   b"Malformed header line"),
    "post": (hixie("/echo/000/g/websocket", GOOD_KEY1, GOOD_KEY2).replace(b"GET", b"POST", 1),
             b"accepted only by GET"),
}


def test_malformed_hixie76_handshakes_are_refused_before_any_101(gw):
    for name, (request, message) in MALFORMED_HIXIE.items():
        answer = exchange(gw, request, then=b"12345678")
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (name, answer)
        assert message in answer, (name, answer)
        assert b"101" not in answer.split(b"\r\n", 1)[0]
    # A name that only ends like the key header (the KeyError after the 101 before):
    # not a hixie-76 handshake, so an RFC 6455 one without its key.
    answer = exchange(gw, hixie("/echo/000/h/websocket", None, GOOD_KEY2, f"X-Sec-WebSocket-Key1: {GOOD_KEY1}\r\n"),
                      then=b"12345678")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    # The gateway serves a good one afterwards.
    good = exchange(gw, hixie("/echo/000/i/websocket", GOOD_KEY1, GOOD_KEY2), then=b"aaaaaaaa", timeout=1.0)
    assert good.startswith(b"HTTP/1.1 101 ") and good.endswith(b"\xca4\x00\xd8\xa5\x08G\x97,\xd5qZ\xba\xbfC{\x00o\xff")
    log = gw.output()
    assert problems(log) == []
    assert len(warnings(log)) <= len(MALFORMED_HIXIE) + 1


def test_a_malformed_request_line_gets_400_and_one_line_at_most(gw):
    answer = exchange(gw, b"GET / HTTP/1.1 x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n"), answer
    log = gw.output()  # (written before the 400 was)
    assert problems(log) == []
    lines = warnings(log)
    assert len(lines) == 1 and "bad request from 127.0.0.1: Bad status line" in lines[0], lines
    assert tcp_stats(gw.url)["bad_requests"] == 1


def test_a_flood_of_bad_requests_is_logged_a_few_lines_a_minute(gw):
    for i in range(40):
        request = [b"GET / HTTP/1.1 x\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
                   b"GET /\x00 HTTP/1.1\r\n\r\n"][i % 4]
        assert exchange(gw, request).startswith(b"HTTP/1.0 400 Bad Request\r\n")
    log = gw.output()
    assert problems(log) == []
    assert len(warnings(log)) == 5  # the rate-limited log's budget per minute for this kind
    assert tcp_stats(gw.url)["bad_requests"] == 40


def test_clients_leaving_in_the_middle_of_a_response_are_not_logged(gw):
    """The client resets the connection right after its request: the response's first
    write meets a closing transport (it used to log ClientConnectionResetError with a
    traceback)."""
    requests = [b"POST /echo/000/s%d/xhr_streaming HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                b"GET /echo/000/e%d/eventsource HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /echo/000/h%d/htmlfile?c=x HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /sockway.js?%d HTTP/1.1\r\nHost: x\r\n\r\n"]
    for i in range(20):
        for request in requests:
            sock = socket.create_connection(("127.0.0.1", gw.port))
            sock.sendall(request % i)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset
    assert wait_for(lambda: tcp_stats(gw.url)["open"] == 1, 5)
    assert problems(gw.output()) == []
