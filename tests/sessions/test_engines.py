"""Which engines share SockJS sessions, and that the memory engine (one node) leaves the
SockJS code path exactly as it was: no relay, nothing looked up."""

from __future__ import annotations

import asyncio

import pytest

from sockway.brokers.memory import MemoryBroker
from sockway.config import EndpointConfig, ServerConfig
from sockway.edge.routes import EndpointRoutes
from sockway.edge.security import ProxyPolicy
from sockway.edge.sockjs_relay import session_relay
from sockway.hub.endpoint import Endpoint
from sockway.hub.hub import Hub
from sockway.hub.modes import create_mode


def test_memory_engine_shares_nothing():
    assert MemoryBroker().shares_sessions is False


@pytest.mark.parametrize(("url", "shares"), [
    ("redis://127.0.0.1:1/0", True),
    ("redis://127.0.0.1:1/0?sessions=off", False),
    ("nats://127.0.0.1:1", True),
    ("nats://127.0.0.1:1?sessions=off&session_ttl=10", False),
])
def test_network_engines_share_sessions_unless_told_not_to(url, shares):
    pytest.importorskip("redis" if url.startswith("redis") else "nats")
    from sockway.brokers import create_broker

    broker = create_broker(url)
    assert broker.shares_sessions is shares


def test_no_relay_with_the_memory_engine():
    async def check() -> None:
        loop = asyncio.get_running_loop()
        config = ServerConfig(endpoints=[EndpointConfig("/echo")])
        hub = Hub(loop, config, MemoryBroker())
        assert session_relay(hub) is None
        endpoint = Endpoint(config.endpoints[0], create_mode("echo", config.endpoints[0]), hub)
        routes = EndpointRoutes(endpoint, sockjs_url="/sockjs.min.js", allowed_origins=[], proxies=ProxyPolicy([]))
        assert routes.relay is None and routes.registry.relay is None

    asyncio.run(check())


@pytest.mark.parametrize("engine", ["redis", "nats"])
def test_session_records_claim_refresh_and_release(engine):
    """Several nodes claiming one session at once agree on one owner; the owner's record
    outlives a loss (re-created within session_ttl / 3) and goes when released; a
    relayed request to a node that does not exist is a LookupError at once."""
    from harness import broker_server

    from sockway.brokers import create_broker

    with broker_server(engine) as server:

        async def scenario() -> None:
            brokers = [create_broker(server.url + "?session_ttl=1.5") for _ in range(3)]
            for i, broker in enumerate(brokers):
                broker.node_id = f"node{i}"
                await broker.start()
            try:
                for k in range(3):
                    key = f"/echo/race{k}"
                    answers = await asyncio.gather(*(b.session_claim(key) for b in brokers for _ in range(3)))
                    assert len(set(answers)) == 1
                    owner = answers[0]
                    assert await brokers[1].session_owner(key) == owner
                    holder = next(b for b in brokers if b.node_id == owner)
                    assert [b for b in brokers if key in b._owned] == [holder]
                    # Lost (a broker restart without persistence, say): the owner re-creates it.
                    if engine == "redis":
                        await holder.redis.delete(holder._skey(key))
                    else:
                        await (await holder._sessions_bucket()).purge(key)
                    for _ in range(100):  # until the owner's refresh puts it back
                        if await brokers[2].session_owner(key) == owner:
                            break
                        await asyncio.sleep(0.05)
                    assert await brokers[2].session_owner(key) == owner
                    result = holder.session_release(key)
                    if result is not None:
                        await result
                    for _ in range(20):
                        if await brokers[2].session_owner(key) is None:
                            break
                        await asyncio.sleep(0.05)
                    assert await brokers[2].session_owner(key) is None
                with pytest.raises(LookupError):
                    await brokers[0].relay("nobody", b"?", 2)
            finally:
                for broker in brokers:
                    await broker.stop()

        asyncio.run(asyncio.wait_for(scenario(), 30))
