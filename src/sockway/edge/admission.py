"""The door: TCP connections counted as they are accepted, and the deadlines of the
phases in which a connection makes the gateway wait.

Every connection is counted from the moment it is accepted, before any byte of HTTP
is read, in total and per client address (``max_tcp_connections``,
``max_tcp_per_address``). A connection over a limit is closed at once: it never holds
a descriptor for longer than its accept, established clients keep working, and the
process never runs out of descriptors (EMFILE), whatever idle or half-open sockets a
client opens. Each admitted connection holds a :class:`Ticket` that whoever owns its
transport releases, exactly once, when the transport is gone.

Phases with a deadline (:class:`Phase`): the first request head (``head_timeout``,
also the hixie-76 key bytes, which belong to that handshake) and a response that a
client does not read (``send_timeout``). They are checked by the hub's periodic sweep
rather than one asyncio timer per connection: every member of a phase has the same
timeout, so the members in insertion order are in deadline order, and a sweep looks
at the expired ones plus one. Entering and leaving are O(1) (an ``OrderedDict``), the
sweep O(expired); the precision is ``sweep_interval`` (1 s by default), which is
plenty for timeouts of several seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from sockway.ratelog import RateLimitedLog

try:
    import resource
except ImportError:  # not on Unix
    resource = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from sockway.config import ServerConfig
    from sockway.edge.security import ProxyPolicy

__all__ = ["Door", "Phase", "Ticket", "address_key", "descriptor_limit", "raise_descriptor_limit",
           "tcp_limits"]

log = logging.getLogger("sockway.edge")
complaints = RateLimitedLog(log)

RESERVE_MIN = 128
"""Descriptors kept out of max_tcp_connections at the least (and an eighth of the
limit): brokers, logs, listeners, the event loop, files being sent."""
PER_ADDRESS_MIN = 64


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a gateway's descriptors are its
    connections; the soft limit is often 1024), and return it."""
    if resource is None:
        return descriptor_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def descriptor_limit() -> int:
    if resource is None:
        return 8192
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def tcp_limits(config: ServerConfig, nofile: int | None = None) -> tuple[int, int]:
    """(max_tcp_connections, max_tcp_per_address), the defaults (0) derived from the
    descriptor limit."""
    total = config.max_tcp_connections
    if not total:
        nofile = descriptor_limit() if nofile is None else nofile
        total = max(16, nofile - max(RESERVE_MIN, nofile // 8))
    per_address = config.max_tcp_per_address or min(total, max(PER_ADDRESS_MIN, total // 16))
    return total, per_address


def address_key(host: str) -> str:
    """What the per-address limit counts: an IPv4 address, or an IPv6 client's /64 (one
    host usually has a whole /64); an IPv4-mapped IPv6 address counts as IPv4."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


class Member(Protocol):
    def timed_out(self) -> None: ...


class Phase:
    """Members in one phase, all with the same timeout, oldest first (see the module's
    docstring). ``timed_out()`` is called on a member whose deadline passed."""

    __slots__ = ("_members", "expired", "name", "timeout")

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        self.expired = 0
        self._members: OrderedDict[object, tuple[float, Member]] = OrderedDict()

    def enter(self, key: object, member: Member, now: float) -> None:
        """Start the clock for ``key``; if it is already in the phase, its deadline
        stays and ``member`` takes over (is the one told when it passes)."""
        members = self._members
        entry = members.get(key)
        members[key] = (now + self.timeout if entry is None else entry[0], member)

    def leave(self, key: object) -> None:
        self._members.pop(key, None)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def sweep(self, now: float) -> None:
        members = self._members
        while members:
            key = next(iter(members))
            deadline, member = members[key]
            if deadline > now:
                return
            del members[key]
            self.expired += 1
            try:
                member.timed_out()
            except Exception:
                log.exception("%s timeout of %r failed", self.name, member)


class Ticket:
    """An admitted connection's place under the limits; released exactly once (a
    second release does nothing)."""

    __slots__ = ("door", "key")

    def __init__(self, door: Door, key: str | None) -> None:
        self.door: Door | None = door
        self.key = key
        """The address counted against max_tcp_per_address (None: exempt)."""

    def release(self) -> None:
        door = self.door
        if door is not None:
            self.door = None
            door._release(self)


class Door:
    """Admission of the TCP connections of one gateway, and its connection phases."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_total: int, max_per_address: int,
                 proxies: ProxyPolicy, head_timeout: float, send_timeout: float) -> None:
        self.loop = loop
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.proxies = proxies
        self.open = 0
        self.by_address: dict[str, int] = {}
        self.refused_total = 0
        """Connections closed at accept because max_tcp_connections were open."""
        self.refused_address = 0
        """...because max_tcp_per_address were open from their address."""
        self.last_refusal = ""
        """The setting that refused the last connection refused (for a message)."""
        self.head = Phase("request head", head_timeout)
        self.send = Phase("send", send_timeout)
        self.bad_requests = 0
        """Requests refused as malformed (400, 408, 431) before reaching a handler."""
        self.client_resets = 0
        """Responses cut short because the client went away."""

    def admit(self, transport: asyncio.BaseTransport) -> Ticket | None:
        """A ticket for a new connection, or None: it is over a limit and the caller
        closes it at once."""
        peer = transport.get_extra_info("peername")
        return self.admit_address(peer[0] if isinstance(peer, tuple) and peer else "?")

    def admit_socket(self, sock: socket.socket) -> Ticket | None:
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        return self.admit_address(peer[0] if isinstance(peer, tuple) and peer else "?")

    def admit_address(self, host: str) -> Ticket | None:
        if self.open >= self.max_total:
            self.refused_total += 1
            self.last_refusal = "max_tcp_connections"
            complaints.warning("refused-total", "refusing a connection from %s: %d TCP connections "
                               "open (max_tcp_connections)", host, self.open)
            return None
        key: str | None = address_key(host)
        if self.proxies.networks and self.proxies.trusts(host):
            key = None  # every client behind a proxy comes from its address
        else:
            count = self.by_address.get(key, 0)
            if count >= self.max_per_address:
                self.refused_address += 1
                self.last_refusal = "max_tcp_per_address"
                complaints.warning("refused-address", "refusing a connection from %s: %d TCP "
                                   "connections open from there (max_tcp_per_address)", host, count)
                return None
            self.by_address[key] = count + 1
        self.open += 1
        return Ticket(self, key)

    def _release(self, ticket: Ticket) -> None:
        self.open -= 1
        self.head.leave(ticket)
        key = ticket.key
        if key is not None:
            count = self.by_address[key] - 1
            if count:
                self.by_address[key] = count
            else:
                del self.by_address[key]

    def sweep(self, now: float) -> None:
        self.head.sweep(now)
        self.send.sweep(now)

    def stats(self) -> dict[str, int]:
        return {
            "open": self.open,
            "max": self.max_total,
            "max_per_address": self.max_per_address,
            "addresses": len(self.by_address),
            "refused_total": self.refused_total,
            "refused_address": self.refused_address,
            "head_timeouts": self.head.expired,
            "send_timeouts": self.send.expired,
            "bad_requests": self.bad_requests,
            "client_resets": self.client_resets,
        }
