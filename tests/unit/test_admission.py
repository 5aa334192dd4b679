"""The door's bookkeeping without sockets: limits derived from the descriptor limit,
per-address keys, tickets released exactly once, and phases swept oldest first."""

from __future__ import annotations

import asyncio

from sockway.config import ServerConfig
from sockway.edge.admission import Door, Phase, address_key, tcp_limits
from sockway.edge.security import ProxyPolicy


def test_limits_are_derived_from_the_descriptor_limit():
    config = ServerConfig()
    assert tcp_limits(config, nofile=1024) == (896, 64)
    assert tcp_limits(config, nofile=65536) == (57344, 3584)
    assert tcp_limits(config, nofile=256) == (128, 64)
    assert tcp_limits(ServerConfig(max_tcp_connections=500), nofile=1024) == (500, 64)
    assert tcp_limits(ServerConfig(max_tcp_connections=40), nofile=1024) == (40, 40)
    assert tcp_limits(ServerConfig(max_tcp_per_address=7), nofile=1024) == (896, 7)


def test_address_keys():
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    # One IPv6 host usually has a whole /64: it counts as one address.
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"


class Transport:
    def __init__(self, host: str) -> None:
        self.host = host

    def get_extra_info(self, name: str):
        return (self.host, 40000) if name == "peername" else None


def door(max_total: int, per_address: int, trusted: list[str] | None = None) -> Door:
    return Door(asyncio.new_event_loop(), max_total, per_address, ProxyPolicy(trusted or []), 10.0, 30.0)


def test_per_address_and_total_limits_and_release():
    d = door(max_total=5, per_address=2)
    a1, a2 = d.admit(Transport("10.0.0.1")), d.admit(Transport("10.0.0.1"))
    assert a1 and a2
    assert d.admit(Transport("10.0.0.1")) is None
    assert d.refused_address == 1
    b = [d.admit(Transport(f"10.0.0.{i}")) for i in (2, 3, 4)]
    assert all(b) and d.open == 5
    assert d.admit(Transport("10.0.0.9")) is None
    assert d.refused_total == 1
    a1.release()
    a1.release()  # a second release does nothing
    assert d.open == 4 and d.by_address["10.0.0.1"] == 1
    assert d.admit(Transport("10.0.0.1")) is not None
    for ticket in (a2, *b):
        ticket.release()
    assert d.open == 1 and d.by_address == {"10.0.0.1": 1}


def test_trusted_proxies_are_exempt_from_the_per_address_limit_only():
    d = door(max_total=4, per_address=1, trusted=["10.0.0.0/24"])
    tickets = [d.admit(Transport("10.0.0.5")) for _ in range(4)]
    assert all(tickets) and d.by_address == {}
    assert d.admit(Transport("10.0.0.5")) is None  # the total still counts them
    for ticket in tickets:
        ticket.release()
    assert d.open == 0


class Member:
    def __init__(self, log: list, name: str) -> None:
        self.log = log
        self.name = name

    def timed_out(self) -> None:
        self.log.append(self.name)


def test_a_phase_expires_its_members_oldest_first_and_looks_no_further():
    log: list[str] = []
    phase = Phase("test", timeout=10.0)
    for i in range(1000):
        phase.enter(i, Member(log, f"m{i}"), now=float(i))
    phase.leave(1)
    # The second entry of a key keeps its deadline; the new member is told.
    phase.enter(2, Member(log, "m2 again"), now=500.0)
    phase.sweep(now=13.0)
    assert log == ["m0", "m2 again", "m3"]
    assert len(phase) == 996 and phase.expired == 3
    phase.sweep(now=10_000.0)
    assert len(log) == 999 and len(phase) == 0
