"""A TCP tunnel's clients are TCP connections of the gateway like HTTP ones: counted at
their accept under the same max_tcp_per_address and max_tcp_connections, refused at
once over a limit with a line saying why, while the established ones keep chatting."""

from __future__ import annotations

import socket
import time

from attack import closed_by_peer, connect_from, problems, tcp_stats
from websockets.sync.client import connect

from support import config_gateway, free_port, wait_for

WELCOME = b"* connected to channel 'tunnel'; type a line and press enter\n"


def config(tunnel_port: int, server: str) -> str:
    return (f'[server]\n{server}\n[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n'
            f'[[tunnel]]\nlisten = "127.0.0.1:{tunnel_port}"\n')


def line(sock: socket.socket, timeout: float = 2.0) -> bytes:
    """One line from the gateway (b"" if it closed the connection first)."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
    return data


def keepalive_timers(port: int) -> list[bool]:
    """For each established connection whose local port is ``port`` (the gateway's side),
    whether the kernel runs its keepalive timer (/proc/net/tcp: state 01, timer 2)."""
    timers = []
    with open("/proc/net/tcp") as table:
        for row in list(table)[1:]:
            fields = row.split()
            if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "01":
                timers.append(fields[5].partition(":")[0] == "02")
    return timers


def refused_at_once(sock: socket.socket, setting: str) -> None:
    """The refusal line, then the end of the connection, within a second."""
    start = time.monotonic()
    assert line(sock, 1.0) == f"* refused: too many connections ({setting}); try again later\n".encode()
    assert closed_by_peer(sock, 1.0)
    assert time.monotonic() - start < 1.0


def test_tunnel_clients_count_per_address():
    port = free_port()
    with config_gateway(config(port, "max_tcp_per_address = 3")) as gw:
        clients = [connect_from("127.0.0.2", port) for _ in range(3)]
        assert [line(c) for c in clients] == [WELCOME] * 3
        fourth = connect_from("127.0.0.2", port)
        refused_at_once(fourth, "max_tcp_per_address")
        http = connect_from("127.0.0.2", gw.port)  # the same count as HTTP connections
        assert closed_by_peer(http, 1.0)
        other = connect_from("127.0.0.3", port)  # another address is let in
        assert line(other) == WELCOME
        # The established ones keep working.
        clients[0].sendall(b"still here\n")
        host, source_port = clients[0].getsockname()
        local = f"{host}:{source_port}"
        for sock in [*clients, other]:
            assert line(sock) == f"[tcp {local}] still here\n".encode()
        stats = tcp_stats(gw.url)
        assert (stats["open"], stats["refused_address"], stats["refused_total"]) == (5, 2, 0)
        # No idle timeout; a peer that vanishes is found by TCP keepalive.
        # (a timer of another kind runs while a segment waits for its acknowledgment)
        assert wait_for(lambda: keepalive_timers(port) == [True] * 4, 2), keepalive_timers(port)
        clients[1].close()
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 4, 5)
        again = connect_from("127.0.0.2", port)  # a place is free again
        assert line(again) == WELCOME
        for sock in [*clients, fourth, http, other, again]:
            sock.close()
        assert wait_for(lambda: tcp_stats(gw.url)["open"] == 1, 5)
        log = gw.output()
        assert len([x for x in log.splitlines() if "refusing a connection from 127.0.0.2" in x]) == 2
        assert problems(log) == []


def test_tunnel_clients_count_in_the_total():
    port = free_port()
    with config_gateway(config(port, "max_tcp_connections = 4")) as gw, \
            connect(gw.ws_url + "/echo/websocket", open_timeout=5) as established:
        clients = [connect_from(f"127.0.0.{2 + i}", port) for i in range(3)]
        assert [line(c) for c in clients] == [WELCOME] * 3
        late = connect_from("127.0.0.9", port)
        refused_at_once(late, "max_tcp_connections")
        established.send("still served")
        assert established.recv(timeout=2) == "still served"
        clients[2].sendall(b"hello\n")
        assert line(clients[0]).endswith(b"] hello\n")
        for sock in [*clients, late]:
            sock.close()
        assert problems(gw.output()) == []
