"""A TCP line server bridged both ways to a channel (``[[tunnel]]``): the talk's
"tunnel" demo, where people on ``nc``/``telnet`` and people in browsers chat together.

Each TCP client is a hub connection (transport ``tcp``) of a pseudo-endpoint
``/tcp/<port>`` in a mode of its own: every line it sends is published to the channel
as ``{"from": "tcp <address>", "text": line}``; it is subscribed to the channel and
receives every publication as one line (``[from] text`` for such objects, the data
itself for strings, JSON otherwise). Like every other connection it is written once per
loop iteration through the hub's coalescer, and the block of lines is made once for all
the tunnel's clients. Its own lines come back to it too, like everyone
else's: the channel is the conversation.

A TCP client that stops reading is a slow consumer like any other: once more than the
endpoint's ``max_buffer`` (1 MiB by default) waits for it, it is disconnected (4008)
rather than holding gateway memory without bound.

A tunnel client is a TCP connection of the gateway like an HTTP one: it is counted at
its accept by the same :class:`~sockway.edge.admission.Door`, under the same
``max_tcp_connections`` and ``max_tcp_per_address`` (they bound the process's
descriptors, which every kind of connection uses), and one over a limit is told so in
one line and closed at once. A client may stay idle as long as it likes (people on
``nc`` read more than they type), so no timeout applies; TCP keepalive (an idle
connection probed after ``KEEPALIVE_IDLE`` seconds) frees the place of a peer that
vanished without closing. Its unfinished line is bounded by ``max_line``, its outgoing
lines by ``max_buffer``, its socket's send buffer by ``[server] socket_send_buffer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any, ClassVar

from sockway import closecodes
from sockway.config import EndpointConfig
from sockway.hub.channels import RAW
from sockway.hub.connection import Connection
from sockway.hub.endpoint import Endpoint
from sockway.hub.message import SOCKJS
from sockway.hub.modes import Mode
from sockway.hub.trace import TRACER
from sockway.jsonutil import dumps_str, loads

if TYPE_CHECKING:
    from sockway.config import TunnelConfig
    from sockway.edge.admission import Door, Ticket
    from sockway.hub.hub import Hub

__all__ = ["TcpTunnel"]

log = logging.getLogger("sockway.tunnel")

KEEPALIVE_IDLE = 60
"""Seconds a tunnel connection may be silent both ways before the kernel probes it
(TCP keepalive); after ``KEEPALIVE_PROBES`` probes ``KEEPALIVE_INTERVAL`` seconds apart
go unanswered, the connection is dropped: a peer that vanished is gone within two
minutes, and a live one answers the probes in its kernel, whatever its user does."""
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 6


def keep_alive(transport: asyncio.BaseTransport, sndbuf: int = 0) -> None:
    """TCP keepalive on the connection's socket (Linux's per-socket timings where they
    exist), and its send buffer's size when ``sndbuf`` is set."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                            ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)


def line_for(data: Any) -> str:
    """How a publication reads on a terminal."""
    if isinstance(data, str):
        try:
            value = loads(data)
        except ValueError:
            return data
        if not isinstance(value, dict):
            return data
        data = value
    if isinstance(data, dict) and "text" in data:
        who = data.get("from") or data.get("user") or "?"
        return f"[{who}] {data['text']}"
    return dumps_str(data)


class TunnelMode(Mode):
    name = "tunnel"

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def on_open(self, conn: Connection) -> None:
        self.hub.channels.subscribe(conn, self.channel, RAW)

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        self.hub.channels.publish(self.channel, {"from": f"tcp {conn.remote}", "text": text})

    def send_direct(self, conn: Connection, data: Any) -> None:
        conn.send(data if isinstance(data, str) else dumps_str(data))


class TcpLineConnection(Connection, asyncio.Protocol):
    """One TCP client. It takes the SockJS encoding of messages (a JSON string, shared
    with every SockJS recipient of the same publication) and turns it into a line."""

    __slots__ = ("_buffer", "_close_code", "_close_reason", "_closed", "_door", "_max", "_max_buffer",
                 "_pending", "_pending_bytes", "_sndbuf", "_ticket", "_transport")
    transport_name: ClassVar[str] = "tcp"
    encoding_key = SOCKJS

    def __init__(self, endpoint: Endpoint, max_line: int, door: Door | None = None, sndbuf: int = 0) -> None:
        super().__init__(endpoint, "?", None)
        self._door = door
        self._ticket: Ticket | None = None
        """The connection's place under the server's TCP limits, released when it is gone."""
        self._sndbuf = sndbuf
        self._buffer = bytearray()  # an unfinished line
        self._closed = False
        self._close_code = closecodes.NORMAL
        self._close_reason = ""
        self._max = max_line
        self._max_buffer = endpoint.config.max_buffer
        self._pending: list[bytes] = []  # SockJS-encoded publications, written at the next flush
        self._pending_bytes = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        door = self._door
        if door is not None:
            self._ticket = door.admit(transport)
            if self._ticket is None:
                self._refuse(f"too many connections ({door.last_refusal}); try again later")
                return
        if not self.endpoint.accepting:
            self._refuse("the gateway is not accepting connections (max_connections, or shutting down)")
            return
        keep_alive(transport, self._sndbuf)
        transport.write(f"* connected to channel {self.endpoint.mode.channel!r}; type a line and press "  # type: ignore[attr-defined]
                        "enter\n".encode())
        self.endpoint.opened(self)

    def _refuse(self, reason: str) -> None:
        """Refused before it opened: one line saying why (a person reads it on ``nc``),
        then closed; it never reaches the endpoint."""
        self._closed = True
        self._close_code, self._close_reason = closecodes.TRY_AGAIN_LATER, reason
        assert self._transport is not None
        self._transport.write(f"* refused: {reason}\n".encode())
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        """Split what came into lines. Linear in what the client sends: each byte is
        looked at once (``bytes.split`` on the new data only; the unfinished line is
        kept in a ``bytearray``, at most ``max_line`` bytes), whatever the number of
        lines or how the bytes are cut. Empty lines are skipped."""
        if self._closed:
            return  # refused or closing: nothing more is read
        self.endpoint.bytes_in += len(data)
        buffer = self._buffer
        if b"\n" not in data:
            buffer += data
            if len(buffer) > self._max:
                self.close(closecodes.MESSAGE_TOO_BIG, f"line longer than {self._max} bytes")
            return
        lines = data.split(b"\n")
        if buffer:
            lines[0] = bytes(buffer) + lines[0]
        self._buffer = bytearray(lines.pop())
        received = self.endpoint.received
        for line in filter(None, lines):  # empty lines skipped in C
            if line == b"\r":
                continue
            if len(line) > self._max:
                self.close(closecodes.MESSAGE_TOO_BIG, f"line longer than {self._max} bytes")
                return
            text = line.rstrip(b"\r").decode("utf-8", "replace")
            if not text:
                continue
            if TRACER.active:
                TRACER.record(self, "in", "tcp-line", text)
            received(self, text)
            if self._closed:
                return
        if len(self._buffer) > self._max:
            self.close(closecodes.MESSAGE_TOO_BIG, f"line longer than {self._max} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()
        if not self._closed and exc is not None:
            self._close_code = closecodes.ABNORMAL
        self._closed = True
        self.endpoint.closed(self, self._close_code, self._close_reason)

    def push(self, encoded: bytes) -> None:
        if self._closed or self._transport is None:
            return
        if self._pending_bytes + len(encoded) + self._transport.get_write_buffer_size() > self._max_buffer:
            log.info("%s: over %d bytes wait for this TCP client, disconnecting it", self.remote, self._max_buffer)
            self.endpoint.hub.stats.slow_consumers += 1
            self._pending = []
            self._pending_bytes = 0
            self._closed = True
            self._close_code, self._close_reason = closecodes.SLOW_CONSUMER, "slow consumer: outgoing buffer full"
            self._transport.abort()  # what waits for it is dropped
            return
        if not self._pending:
            self.endpoint.hub.coalescer.mark(self)
        self._pending.append(encoded)
        self._pending_bytes += len(encoded)

    def flush(self, cache: dict) -> None:
        """Write what came this loop iteration as one block of lines. Every tunnel client
        given the same publications gets the same block: it is made once (``cache`` lives
        for one flush of the hub's coalescer)."""
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        if not pending or self._closed or self._transport is None:
            return
        key = ("tcp-lines", pending[0] if len(pending) == 1 else tuple(pending))
        block = cache.get(key)
        if block is None:
            lines = [line_for(loads(encoded)) for encoded in pending]
            block = cache[key] = ("\n".join(lines) + "\n").encode(), lines
        data, lines = block
        self.endpoint.bytes_out += len(data)
        if TRACER.active:
            for line in lines:
                TRACER.record(self, "out", "tcp-line", line.encode())
        self._transport.write(data)
        self.endpoint.hub.coalescer.writes += 1

    def close(self, code: int = closecodes.NORMAL, reason: str = "") -> None:
        if self._closed or self._transport is None:
            return
        self.flush({})
        self._closed = True
        self._close_code, self._close_reason = code, reason
        if reason:
            self._transport.write(f"* closed: {reason}\n".encode())
        self._transport.close()

    @property
    def is_open(self) -> bool:
        return not self._closed


class TcpTunnel:
    """One ``[[tunnel]]``: its listener, its pseudo-endpoint. ``door``: the gateway's
    admission of TCP connections, which counts this listener's too; ``sndbuf``: the
    server's ``socket_send_buffer``."""

    def __init__(self, hub: Hub, config: TunnelConfig, door: Door | None = None, sndbuf: int = 0) -> None:
        self.hub = hub
        self.config = config
        self.door = door
        self.sndbuf = sndbuf
        host, _, port = config.listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        endpoint_config = EndpointConfig(f"/tcp/{self.port}", "tunnel", sockjs=False, websocket=False)
        self.endpoint = Endpoint(endpoint_config, TunnelMode(config.channel), hub)
        hub.add_endpoint(self.endpoint)
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(
                lambda: TcpLineConnection(self.endpoint, self.config.max_line, self.door, self.sndbuf),
                self.host, self.port, backlog=4096)
        except OSError as exc:
            raise OSError(f"[[tunnel]] cannot listen on {self.config.listen}: {exc.strerror}") from None
        log.info("TCP tunnel on %s <-> channel %r", self.config.listen, self.config.channel)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
