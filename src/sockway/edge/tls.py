"""Accepting TLS connections so that each is counted before its handshake.

With ``loop.create_server(ssl=...)`` the gateway would see a TLS connection only once
its handshake is done: a client that opens sockets and never finishes a handshake
would hold descriptors that no limit counts. So a TLS listener accepts connections
itself: each is admitted at its accept (:mod:`sockway.edge.admission`; over a limit it
is closed there and then, before any TLS work), then handed to the event loop with
``loop.connect_accepted_socket(ssl=...)``, the handshake bounded by ``head_timeout``
like the request head that follows it (both count from the accept). One task per
connection while its handshake runs, which is small beside the handshake itself.
Plain TCP listeners keep the event loop's own accept loop (the admission is then done
by the first protocol, :mod:`sockway.edge.sniffer`, at no extra cost).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable

from sockway.edge.admission import Door, Ticket, complaints

__all__ = ["TlsListener"]

ACCEPT_BATCH = 128
"""Connections accepted per readiness of the listening socket, so that a flood of
connections does not hold the event loop for long."""
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Handshake:
    """The head_timeout of a connection still in its TLS handshake."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task

    def timed_out(self) -> None:
        self.task.cancel()


class TlsListener:
    """A listening socket whose connections get TLS after admission. Looks like an
    ``asyncio.Server`` to the gateway (``sockets``, ``close()``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, door: Door,
                 factory: Callable[[Ticket], asyncio.Protocol], context: ssl.SSLContext) -> None:
        self.loop = loop
        self.sockets = [sock]
        self.door = door
        self.factory = factory
        self.context = context
        self._sock = sock
        self._closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _accept(self) -> None:
        door = self.door
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # Only when max_tcp_connections is set above what the process may
                    # open: stop accepting for a second rather than spin.
                    complaints.warning("accept", "cannot accept a connection: %s", exc)
                    self.loop.remove_reader(self._sock.fileno())
                    self.loop.call_later(1.0, self._resume)
                return
            ticket = door.admit_socket(conn)
            if ticket is None:
                conn.close()
                continue
            conn.setblocking(False)
            task = self.loop.create_task(self._handshake(conn, ticket))
            door.head.enter(ticket, _Handshake(task), self.loop.time())

    def _resume(self) -> None:
        if not self._closed:
            self.loop.add_reader(self._sock.fileno(), self._accept)

    async def _handshake(self, conn: socket.socket, ticket: Ticket) -> None:
        # The transport owns the socket from here: it closes it when the handshake fails
        # (closing it here too could close a descriptor already reused).
        try:
            await self.loop.connect_accepted_socket(
                lambda: self.factory(ticket), conn, ssl=self.context,
                ssl_handshake_timeout=self.door.head.timeout)
        except asyncio.CancelledError:  # head_timeout, or the server stops
            ticket.release()
            raise
        except Exception:  # a failed handshake: the client's problem, not worth a line
            ticket.release()
