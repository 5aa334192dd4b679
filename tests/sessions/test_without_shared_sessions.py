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
from rawsockjs import raw_session

from sockway.client.sockjs import SockJSClient

pytestmark = pytest.mark.timeout(120)

SETUPS = [pytest.param(("memory", ""), id="memory-broker-per-node"),
          pytest.param(("redis", "?sessions=off"), id="redis-sessions-off")]


async def echo(url: str, transport: str, count: int = 30) -> str | None:
    """None when ``count`` messages echo in order, else what went wrong."""
    client = SockJSClient(url + "/echo", transport=transport, open_timeout=5)
    try:
        await client.open()
        messages = [f"m{i}" for i in range(count)]
        for message in messages:
            await client.send(message)
        got = [await client.recv(3) for _ in messages]
        return None if got == messages else f"out of order: {got}"
    except Exception as exc:
        return repr(exc)
    finally:
        await client.close()


@pytest.mark.parametrize("setup", SETUPS)
def test_round_robin_breaks_without_shared_sessions(setup):
    engine, options = setup
    with round_robin(engine, options) as rr:

        async def scenario() -> None:
            async with raw_session(rr.url + "/echo") as s:
                owner = await s.open()
                status, _, upstream = await s.send("hello")
                assert upstream != owner
                assert status == 404  # the other node does not know the session
                await asyncio.to_thread(http_get, rr.url + "/sockway/health")  # nginx's turn passes
                frame, upstream = await s.receive("xhr-polling")
                assert upstream != owner
                assert frame == "o"  # ... and opens another one under the same id
            for transport in ("xhr-polling", "jsonp-polling", "xhr-streaming", "eventsource", "htmlfile"):
                problem = await echo(rr.url, transport)
                assert problem is not None, f"{transport} worked without shared sessions"

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
                served = rr.nginx.upstreams_of(sid)
                assert len(served) == 1 and sum(served.values()) > 100, served
            # Different sessions go to different nodes.
            upstreams = set()
            for _ in range(16):
                async with raw_session(rr.url + "/echo") as s:
                    upstreams.add(await s.open())
            assert upstreams == set(rr.ids)

        asyncio.run(asyncio.wait_for(scenario(), 90))
