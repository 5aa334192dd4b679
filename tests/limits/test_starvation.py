"""No hostile client may starve the gateway: 1,500 silent sockets and 300 half-sent
request heads, from a few addresses, against a gateway allowed 1,024 descriptors,
while a normal client (another address) keeps being served within 2 s, an established
WebSocket keeps working, and the descriptors come back after head_timeout.

The limits are the defaults derived from the descriptor limit (896 TCP connections,
64 per address); head_timeout is shortened so that the test takes seconds."""

from __future__ import annotations

import time

from attack import (
    closed_by_peer,
    connect_from,
    descriptors_for_the_test,
    limit_descriptors,
    open_descriptors,
    problems,
    tcp_stats,
    timed_get,
)
from websockets.sync.client import connect

from support import config_gateway, wait_for

HEAD_TIMEOUT = 2.0
CONFIG = f"""
[server]
head_timeout = {HEAD_TIMEOUT}
sweep_interval = 0.2

[[endpoint]]
prefix = "/echo"
mode = "echo"
"""

SILENT = 1500
PARTIAL = 300
SILENT_FROM = [f"127.0.0.{i}" for i in range(2, 8)]  # 6 addresses, 250 sockets each
PARTIAL_FROM = [f"127.0.0.{i}" for i in range(8, 11)]  # 3 addresses, 100 each
PER_ADDRESS = 64  # the default for 1,024 descriptors


def test_silent_and_half_open_connections_do_not_starve_the_gateway():
    with descriptors_for_the_test(4096), \
            config_gateway(CONFIG, preexec_fn=limit_descriptors(1024)) as gw, \
            connect(gw.ws_url + "/echo/websocket", open_timeout=5) as established:
        pid = gw.proc.pid
        stats = tcp_stats(gw.url)
        assert (stats["max"], stats["max_per_address"]) == (896, PER_ADDRESS)
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 2, 5)  # the established WebSocket, the asking request
        baseline = open_descriptors(pid)
        sockets = []
        try:
            for i in range(SILENT):
                sockets.append(connect_from(SILENT_FROM[i % len(SILENT_FROM)], gw.port))
            for i in range(PARTIAL):
                sock = connect_from(PARTIAL_FROM[i % len(PARTIAL_FROM)], gw.port)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                sockets.append(sock)
            attack_ready = time.monotonic()

            # A normal client is served at once, and the established WebSocket works.
            status, took = timed_get(gw.url + "/healthz", timeout=2)
            assert status == 200 and took < 2.0
            with connect(gw.ws_url + "/echo/websocket", open_timeout=2) as newcomer:
                newcomer.send("still here")
                assert newcomer.recv(timeout=2) == "still here"
            established.send("me too")
            assert established.recv(timeout=2) == "me too"
            assert time.monotonic() - attack_ready < 4.0

            # Each address holds at most its share; the rest were closed at their accept.
            held = PER_ADDRESS * (len(SILENT_FROM) + len(PARTIAL_FROM))
            assert wait_for(lambda: tcp_stats(gw.url)["refused_address"] == SILENT + PARTIAL - held, 5)
            # + the established WebSocket and the request asking
            assert wait_for(lambda: tcp_stats(gw.url)["open"] == held + 2, 5)
            during = open_descriptors(pid)
            assert during < 1024 - 64, during
            assert closed_by_peer(sockets[SILENT - 1], timeout=1.0)  # a refused one

            # head_timeout later: the silent ones are closed, the half-sent heads get 408.
            partial = sockets[SILENT]
            partial.settimeout(HEAD_TIMEOUT + 3)
            assert partial.recv(4096).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
            assert wait_for(lambda: open_descriptors(pid) <= baseline, HEAD_TIMEOUT + 3)
            after = open_descriptors(pid)
        finally:
            for sock in sockets:
                sock.close()
        assert tcp_stats(gw.url)["head_timeouts"] == held
        established.send("after")
        assert established.recv(timeout=2) == "after"
        print(f"descriptors: baseline {baseline}, during {during}, after {after}; "
              f"/healthz under attack in {took * 1000:.0f} ms")
        assert problems(gw.output()) == []
