"""TCP connections are counted at their accept, in total and per client address, and
one over a limit is closed at once (before any HTTP is read), while established
clients keep working. Trusted proxies are exempt from the per-address limit."""

from __future__ import annotations

from attack import closed_by_peer, connect_from, problems, tcp_stats, timed_get
from websockets.sync.client import connect

from support import config_gateway, wait_for

ECHO = '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n'


def refusal_lines(log: str, reason: str) -> list[str]:
    return [line for line in log.splitlines() if "refusing a connection" in line and reason in line]


def test_per_address_limit():
    with config_gateway(f"[server]\nmax_tcp_per_address = 5\n{ECHO}") as gw:
        mine = [connect_from("127.0.0.2", gw.port) for _ in range(5)]
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 6, 5)  # + the request asking
        sixth = connect_from("127.0.0.2", gw.port)
        assert closed_by_peer(sixth, 1.0)
        other = connect_from("127.0.0.3", gw.port)  # another address is let in
        assert not closed_by_peer(other, 0.3)
        assert timed_get(gw.url + "/healthz", timeout=2)[0] == 200
        stats = tcp_stats(gw.url)
        assert (stats["open"], stats["refused_address"], stats["refused_total"]) == (7, 1, 0)
        for sock in mine[:1]:
            sock.close()
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 6, 5)
        again = connect_from("127.0.0.2", gw.port)  # a place is free again
        assert not closed_by_peer(again, 0.3)
        for sock in [*mine, sixth, other, again]:
            sock.close()
        log = gw.output()
        assert len(refusal_lines(log, "max_tcp_per_address")) == 1
        assert problems(log) == []


def test_total_limit_refuses_new_connections_and_keeps_established_ones():
    with config_gateway(f"[server]\nmax_tcp_connections = 8\n{ECHO}") as gw, \
            connect(gw.ws_url + "/echo/websocket", open_timeout=5) as established:
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 2, 5)
        held = [connect_from(f"127.0.0.{2 + i}", gw.port) for i in range(7)]
        late = connect_from("127.0.0.20", gw.port)
        assert closed_by_peer(late, 1.0)
        established.send("still served")
        assert established.recv(timeout=2) == "still served"
        for sock in held:
            sock.close()
        stats = {}
        assert wait_for(lambda: stats.update(tcp_stats(gw.url)) or stats["open"] == 2, 5)
        assert (stats["refused_total"], stats["refused_address"]) == (1, 0)
        late.close()
        log = gw.output()
        assert len(refusal_lines(log, "max_tcp_connections")) == 1
        assert problems(log) == []


def test_trusted_proxies_are_exempt_from_the_per_address_limit():
    toml = f'[server]\nmax_tcp_per_address = 2\ntrusted_proxies = ["127.0.0.4"]\n{ECHO}'
    with config_gateway(toml) as gw:
        proxied = [connect_from("127.0.0.4", gw.port) for _ in range(6)]
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 7, 5)
        assert not any(closed_by_peer(sock, 0.05) for sock in proxied)
        assert tcp_stats(gw.url)["refused_address"] == 0
        for sock in proxied:
            sock.close()
        assert problems(gw.output()) == []
