"""Fixtures of the broker tests: one broker server per module and kind (tests that kill
their broker start their own), and gateway clusters on each engine, shared by the tests
of a module (they use channel names of their own)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cluster import broker_server, nodes, require_module

from support import GatewayProcess

ENGINES = ["memory", "redis", "nats"]
NETWORK_ENGINES = ["redis", "nats"]


@pytest.fixture(scope="module")
def redis_server():
    require_module("redis")
    with broker_server("redis") as server:
        yield server


@pytest.fixture(scope="module")
def nats_server():
    require_module("nats")
    with broker_server("nats") as server:
        yield server


@dataclass
class Cluster:
    engine: str
    url: str
    nodes: list[GatewayProcess]

    def pick(self, i: int) -> GatewayProcess:
        """Node i, or the only node (the memory engine runs one)."""
        return self.nodes[i % len(self.nodes)]


def engine_url(request, kind: str) -> str:
    if kind == "memory":
        return "memory://"
    return request.getfixturevalue(f"{kind}_server").url


@pytest.fixture(scope="module", params=ENGINES)
def cluster(request):
    """Three gateway nodes on one Redis or NATS; one node on the memory engine."""
    kind = request.param
    url = engine_url(request, kind)
    with nodes(url, 1 if kind == "memory" else 3) as gws:
        yield Cluster(kind, url, gws)


@pytest.fixture(scope="module", params=NETWORK_ENGINES)
def network_url(request) -> str:
    """The URL of a Redis or NATS for tests that start and stop nodes themselves."""
    return engine_url(request, request.param)
