"""Nodes going away behind round-robin nginx.

A node that dies takes its sessions with it (their queue, subscriptions and state were
in its memory): a request for such a session lands on a surviving node, which finds the
owner gone and answers ``c[1006,"Session lost"]`` (polls, new streams, and a stream it
was relaying for the dead owner), a send gets 404; once the dead node's record has
expired (``session_ttl``), the id opens a new session, as an unknown id does on a single
node.

A node that stops (SIGTERM) while it relays requests of sessions it does not own ends
them cleanly (a stream's response ends, a poll gets a heartbeat): those sessions live on
at their owner, and the client's next requests, served by the other node, continue them."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from cluster import http_get
from harness import ENGINES, round_robin
from rawsockjs import raw_session

pytestmark = pytest.mark.timeout(120)

LOST = 'c[1006,"Session lost"]'


def last(upstreams: str) -> str:
    return upstreams.split(", ")[-1]


@pytest.mark.parametrize("engine", ENGINES)
def test_requests_for_a_session_of_a_dead_node(engine):
    with round_robin(engine, "?session_ttl=3") as rr:

        async def scenario() -> None:
            async with raw_session(rr.url + "/echo") as doomed, raw_session(rr.url + "/short") as relayed:
                owner = await doomed.open()
                survivor = next(u for u in rr.ids if u != owner)
                # A session of the same node with a stream relayed through the survivor
                # (/short: heartbeat_delay 1 s, so its pulls are short).
                await asyncio.to_thread(http_get, rr.url + "/sockway/health")  # nginx's turn passes
                assert await relayed.open() == owner
                stream = await relayed.receiving("xhr-streaming")
                assert stream.upstream == survivor
                assert await stream.frame() == "h"

                node = rr.node_at(owner)
                node.proc.send_signal(signal.SIGKILL)
                node.proc.wait(5)

                # nginx fails over to the survivor (connection refused), which relays to
                # the owner and finds nobody there.
                # (X-Upstream lists every upstream nginx tried, the one that answered last.)
                for transport in ("xhr-polling", "jsonp-polling", "eventsource", "htmlfile"):
                    frame, upstream = await doomed.receive(transport)
                    assert (frame, last(upstream)) == (LOST, survivor), transport
                status, _, upstream = await doomed.send("anyone?")
                assert (status, last(upstream)) == (404, survivor)
                # The stream relayed by the survivor ends with the same close frame (within
                # heartbeat_delay + the relay timeout: its pending pull is never answered).
                frames = [await stream.frame(15) for _ in range(2)]
                assert LOST in frames, frames
                assert await stream.frame(15) == ""  # and the response ends

                # After session_ttl the dead node's record is gone: the id opens anew.
                deadline = time.monotonic() + 15
                while True:
                    frame, upstream = await doomed.receive("xhr-polling")
                    if frame != LOST or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                assert (frame, last(upstream)) == ("o", survivor)

        asyncio.run(asyncio.wait_for(scenario(), 90))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stopping_node_hands_back_the_requests_it_relays(engine):
    with round_robin(engine) as rr:

        async def scenario() -> None:
            async with raw_session(rr.url + "/echo") as streamed, raw_session(rr.url + "/echo") as polled:
                owner = await streamed.open()
                other = next(u for u in rr.ids if u != owner)
                await asyncio.to_thread(http_get, rr.url + "/sockway/health")
                assert await polled.open() == owner
                stream = await streamed.receiving("xhr-streaming")
                assert stream.upstream == other
                await asyncio.to_thread(http_get, rr.url + "/sockway/health")
                poll = await polled.receiving("xhr-polling")
                await asyncio.sleep(0.3)  # both attached on the owner, through the other node
                status, _, _ = await streamed.send("before")
                assert status == 204
                assert await stream.frame() == 'a["before"]'

                node = rr.node_at(other)
                node.proc.send_signal(signal.SIGTERM)
                assert await stream.frame(10) == ""  # the response ends, without a close frame
                assert await poll.frame(10) == "h"
                assert last(poll.upstream) == other
                node.proc.wait(10)

                # The sessions go on at their owner.
                for session in (streamed, polled):
                    status, _, upstream = await session.send("after")
                    assert (status, last(upstream)) == (204, owner)
                    frame, upstream = await session.receive("xhr-polling")
                    assert (frame, last(upstream)) == ('a["after"]', owner)

        asyncio.run(asyncio.wait_for(scenario(), 60))
