"""A TCP forwarder on 127.0.0.1 in front of a broker, for the tests of a broker that
goes away or hangs without touching the broker itself (the machine's shared Redis and
NATS must keep running for everyone else).

``kill()`` closes every connection and the listening socket: the broker's address now
refuses connections (an unreachable broker). ``hang()`` stops forwarding in both
directions but keeps every connection open and accepts new ones without answering: a
broker that hangs (a stuck server, a black-holed network path).

Written by hand because it needs exactly these two failure modes, switched at a given
moment, from inside the test process; one thread with a selector, every wait bounded.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator

__all__ = ["TcpProxy", "tcp_proxy"]


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []
        self._hanging = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._peers) // 2 + len(self._held)

    def hang(self) -> None:
        """Forward nothing more, in either direction; keep every connection open."""
        with self._lock:
            self._hanging = True
            for sock in list(self._peers):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)

    def kill(self) -> None:
        """Close everything: connections are reset, new ones refused."""
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for sock in [*self._peers, *self._held, self.listener]:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                with contextlib.suppress(OSError):
                    sock.close()
            self._peers.clear()
            self._held.clear()
        self._selector.close()

    close = kill

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                sock = key.fileobj
                with self._lock:
                    if sock is self.listener:
                        self._accept()
                    elif sock in self._peers and not self._hanging:
                        self._forward(sock)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self._hanging:
            self._held.append(client)  # accepted, never answered
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client] = upstream
        self._peers[upstream] = client

    def _forward(self, sock: socket.socket) -> None:
        other = self._peers[sock]
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            try:
                other.setblocking(True)
                other.settimeout(2)
                other.sendall(data)
                other.setblocking(False)
                return
            except OSError:
                pass
        for end in (sock, other):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(end)
            self._peers.pop(end, None)
            end.close()


@contextlib.contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port)
    try:
        yield proxy
    finally:
        if not proxy._stop.is_set():
            proxy.kill()
