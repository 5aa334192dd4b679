"""The same round-robin nginx in front of nodes that do not share sessions — each on its
own memory broker, or on Redis with ``sessions=off`` — breaks SockJS over HTTP: a
request that lands on the other node finds no session ("session unknown": a send gets
404, a poll opens a second session under the same id). This is what the shared-session
tests would see without the feature, so they are meaningful. With a sticky nginx
(``hash`` on the session part of the URL) the same nodes work again."""

from __future__ import annotations

import asyncio

import pytest
from cluster import http_get
from harness import round_robin
from rawsockjs import TRANSPORTS, raw_session

from sockway.client.sockjs import SockJSClient
from support import wait_for

pytestmark = pytest.mark.timeout(120)

SETUPS = [pytest.param(("memory", ""), id="memory-broker-per-node"),
          pytest.param(("redis", "?sessions=off"), id="redis-sessions-off")]


async def session_unknown_elsewhere(rr, transport: str) -> None:
    """A session opened over ``transport`` on one node is unknown to the other: a send
    that nginx hands to the other node gets 404 (empty body), and a receiving request
    there opens a second session under the same id (``o``). nginx alternates the two
    nodes request by request, and nothing else talks to it meanwhile."""
    async with raw_session(rr.url + "/echo") as s:
        first = await s.receiving(transport)  # a stream: attached; a poll: "o" at once
        try:
            assert await first.frame() == "o"
            owner = first.upstream
            status, body, upstream = await s.send("hello", transport=transport)
            assert (status, body) == (404, ""), (transport, status, body)
            assert upstream != owner
            await asyncio.to_thread(http_get, rr.url + "/sockway/health")  # the owner's turn passes
            frame, upstream = await s.receive(transport)
            assert frame == "o", (transport, frame)
            assert upstream != owner
        finally:
            first.abort()


@pytest.mark.parametrize("setup", SETUPS)
def test_round_robin_breaks_without_shared_sessions(setup):
    engine, options = setup
    with round_robin(engine, options) as rr:

        async def scenario() -> None:
            for transport in TRANSPORTS:
                await session_unknown_elsewhere(rr, transport)

        asyncio.run(asyncio.wait_for(scenario(), 90))


def test_sticky_nginx_works_without_shared_sessions():
    """The alternative to sharing sessions: nginx routes every request of a session to
    one node (``hash`` on the session id of the URL)."""
    with round_robin("redis", "?sessions=off", sticky=True) as rr:

        async def scenario() -> None:
            for transport in ("xhr-polling", "jsonp-polling", "xhr-streaming", "eventsource", "htmlfile"):
                client = SockJSClient(rr.url + "/echo", transport=transport)
                await client.open()
                sid = client.session_url.rsplit("/", 1)[1]
                messages = [f"{transport} {i}" for i in range(100)]
                for message in messages:
                    await client.send(message)
                assert [await client.recv(5) for _ in messages] == messages
                await client.close()
                # nginx logs a request when it ends: the closed stream's line may come later.
                await asyncio.to_thread(wait_for, lambda sid=sid: sum(rr.nginx.upstreams_of(sid).values()) > 100, 5)
                served = rr.nginx.upstreams_of(sid)
                assert len(served) == 1 and sum(served.values()) > 100, served
            # Different sessions go to different nodes.
            upstreams = set()
            for _ in range(16):
                async with raw_session(rr.url + "/echo") as s:
                    upstreams.add(await s.open())
            assert upstreams == set(rr.ids)

        asyncio.run(asyncio.wait_for(scenario(), 90))
