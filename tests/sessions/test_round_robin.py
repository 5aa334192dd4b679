"""SockJS sessions over HTTP behind a plain round-robin nginx (no stickiness): two
gateway nodes sharing sessions through Redis or NATS, each client request going to the
next node in turn (checked, not assumed: nginx's X-Upstream header and access log).

For every polling and streaming transport (xhr-polling, jsonp-polling, xhr-streaming,
eventsource, htmlfile), with sockway's own SockJS client or request by request:
messages echo in order (streams reopened after response_limit), publications made on
either node arrive, the application's commands (send, close) reach the session through
any node, a second receiving request gets c[2010], a client that aborts closes the
session with c[1002], heartbeats come from the owner, a session expires after
disconnect_delay and its id opens a new one, send errors are the owner's answers, and a
session whose owner died answers c[1006,"Session lost"] until its record expires.
test_without_shared_sessions.py shows the same setup breaking without the feature.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os

import pytest
from cluster import Client, api_ok, http_get
from rawsockjs import POLLING, STREAMING, TRANSPORTS, raw_session
from realtime_run import run

from sockway.client.base import Closed
from sockway.client.sockjs import SockJSClient

pytestmark = pytest.mark.timeout(120)

T = 5.0
ANOTHER = 'c[2010,"Another connection still open"]'
INTERRUPTED = 'c[1002,"Connection interrupted"]'
SUFFIX = {"xhr-polling": "xhr", "jsonp-polling": "jsonp", "xhr-streaming": "xhr_streaming",
          "eventsource": "eventsource", "htmlfile": "htmlfile"}


def session_id(client: SockJSClient) -> str:
    return client.session_url.rsplit("/", 1)[1]


def receiving_requests(rr, sid: str, transport: str) -> dict[str, int]:
    """Receiving requests of a session per upstream, from nginx's log."""
    counts: dict[str, int] = {}
    for upstream, _status, uri in rr.nginx.log():
        if f"/{sid}/{SUFFIX[transport]}" in uri and not uri.split("?")[0].endswith("_send"):
            counts[upstream] = counts.get(upstream, 0) + 1
    return counts


async def skip_turn(rr) -> None:
    """One request through nginx, so that the next one goes to the other node."""
    await asyncio.to_thread(http_get, rr.url + "/sockway/health")


@run(30)
async def test_consecutive_requests_alternate_between_the_nodes(rr):
    seen = []
    for _ in range(8):
        _status, health = await asyncio.to_thread(http_get, rr.url + "/sockway/health")
        seen.append(health["node"])
    assert set(seen) == set(rr.ids.values()), seen
    assert all(a != b for a, b in itertools.pairwise(seen)), seen


@pytest.mark.parametrize("transport", TRANSPORTS)
@run(60)
async def test_echo_in_order(rr, transport):
    client = SockJSClient(rr.url + "/echo", transport=transport)
    await client.open()
    sid = session_id(client)
    # 200 messages of 200-350 bytes: 50 KiB of echo, so streams end at the 4 KiB
    # response_limit again and again and reopen (on either node).
    messages = [f"{i:04d} " + "zażółć 😀" * (i % 4) + "x" * (200 + i % 97) for i in range(200)]
    try:
        for i, message in enumerate(messages):
            await client.send(message)
            if i % 7 == 3:
                await skip_turn(rr)  # vary which node the reopened streams land on
        got = [await client.recv(T) for _ in messages]
        assert got == messages
    finally:
        await client.close()
    served = rr.nginx.upstreams_of(sid)
    assert set(served) == set(rr.ids), served  # both nodes served this session's requests
    assert min(served.values()) >= 50, served
    receiving = receiving_requests(rr, sid, transport)
    if transport in STREAMING:
        # Reopened after response_limit (on whichever node nginx picked each time; the
        # tests below make sure a stream on the node that does not own the session works).
        assert sum(receiving.values()) >= 4, receiving
    else:
        assert set(receiving) == set(rr.ids), receiving


@pytest.mark.parametrize("transport", TRANSPORTS)
@run(60)
async def test_several_messages_in_one_send_and_one_answer(rr, transport):
    async with raw_session(rr.url + "/echo") as s:
        await s.open(transport if transport in POLLING else "xhr-polling")
        for i in range(4):  # alternately sent through each node
            status, _body, _ = await s.send(f"a{i}", f"b{i}", f"c{i}", transport=transport)
            assert status == (200 if transport == "jsonp-polling" else 204)
        if transport in POLLING:
            frame, _ = await s.receive(transport)
        else:
            receiving = await s.receiving(transport)
            frame = await receiving.frame()
            receiving.abort()
        # Everything queued while no request was attached comes as one frame, in order.
        assert json.loads(frame[1:]) == [f"{x}{i}" for i in range(4) for x in "abc"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@run(60)
async def test_publications_and_commands_from_every_node(rr, transport):
    client = SockJSClient(rr.url + "/ch", transport=transport)
    await client.open()
    try:
        connected = json.loads(await client.recv(T))
        assert connected["type"] == "connected"
        conn = connected["conn"]
        owner = conn.partition(".")[0]
        other = next(n for n in rr.nodes if rr.ids[f"127.0.0.1:{n.port}"] != owner)
        channel = f"news-{os.urandom(3).hex()}"
        await client.send(json.dumps({"op": "subscribe", "channel": channel, "id": 1}))
        reply = json.loads(await client.recv(T))
        assert reply["type"] == "reply" and "result" in reply, reply
        for i in range(20):
            await api_ok(rr.nodes[i % 2], "publish", channel=channel, data=i)
        ws = await Client.connect(other, "/ch")  # a WebSocket client of the other node publishes too
        await ws.ok("publish", channel=channel, data="from a client of the other node")
        await ws.close()
        got = [json.loads(await client.recv(T)) for _ in range(21)]
        assert [m["data"] for m in got] == [*range(20), "from a client of the other node"]
        assert [m["offset"] for m in got] == list(range(1, 22))
        # The application's commands for the connection, through the node that does not
        # own it (forwarded to the owner by connection id).
        await api_ok(other, "send", conn=conn, data="to you")
        assert json.loads(await client.recv(T)) == {"type": "message", "data": "to you"}
        await api_ok(other, "close", conn=conn, code=4000, reason="bye")
        with pytest.raises(Closed) as closed:
            await client.recv(T)
        assert (closed.value.code, closed.value.reason) == (4000, "bye")
    finally:
        await client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@run(60)
async def test_one_receiving_request_at_a_time(rr, transport):
    async with raw_session(rr.url + "/echo") as s:
        await s.open()
        first = await s.receiving(transport)
        second = await s.receiving(transport)
        # Whichever attached first keeps the session; the other is refused at once,
        # which shows that the first is attached: then the message goes to it.
        frames = {r: asyncio.ensure_future(r.frame()) for r in (first, second)}
        done, _ = await asyncio.wait(frames.values(), timeout=T, return_when=asyncio.FIRST_COMPLETED)
        [refused] = [r for r, f in frames.items() if f in done]
        assert frames[refused].result() == ANOTHER
        status, _, _ = await s.send("hello")
        assert status == 204
        attached = second if refused is first else first
        assert await frames[attached] == 'a["hello"]'
        assert first.upstream != second.upstream  # one of the two was relayed to the owner
        for r in (first, second):
            r.abort()


@pytest.mark.parametrize("where", ["owner", "other node"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@run(60)
async def test_client_abort_closes_the_session(rr, transport, where):
    async with raw_session(rr.url + "/echo") as s:
        owner = await s.open()
        if where == "owner":
            await skip_turn(rr)
        receiving = await s.receiving(transport)  # a stream: attached once this returns
        if transport in POLLING:
            # Nothing shows when a poll is attached (a probe would attach in its place
            # if it came first): give it the time to reach the owner.
            await asyncio.sleep(0.3)
        receiving.abort()
        frames = []
        for _ in range(50):
            frame, _ = await s.receive("xhr-polling")
            frames.append(frame)
            if frame != ANOTHER:  # the abort is still on its way
                break
            await asyncio.sleep(0.1)
        assert frames[-1] == INTERRUPTED, frames
        # And it stays closed, for every node.
        for _ in range(2):
            frame, _ = await s.receive(transport)
            assert frame == INTERRUPTED
        status, _, _ = await s.send("too late")
        assert status == 404
        if transport in STREAMING:
            served = receiving.upstream
        else:  # nginx logs a request its client closed as 499
            served = next(u for u, st, uri in rr.nginx.log() if st == 499 and f"/{s.session_id}/" in uri)
        assert (served == owner) == (where == "owner"), (served, owner)


@pytest.mark.parametrize("transport", TRANSPORTS)
@run(60)
async def test_heartbeats_reach_a_waiting_request_on_any_node(rr, transport):
    async with raw_session(rr.url + "/short") as s:  # heartbeat_delay = 1 s
        await s.open()
        upstreams = set()
        if transport in POLLING:
            for _ in range(4):
                frame, upstream = await s.receive(transport, timeout=T)
                assert frame == "h"
                upstreams.add(upstream)
            assert len(upstreams) == 2
        else:
            receiving = await s.receiving(transport)
            assert [await receiving.frame(T) for _ in range(3)] == ["h", "h", "h"]
            receiving.abort()


@pytest.mark.parametrize("transport", ["xhr-polling", "xhr-streaming"])
@run(60)
async def test_an_expired_session_opens_again_as_a_new_one(rr, transport):
    async with raw_session(rr.url + "/short") as s:  # disconnect_delay = 1 s
        first = await s.open(transport)
        key = f"sockway:s:/short/{s.session_id}"
        if rr.engine == "redis":
            import redis

            r = redis.Redis.from_url(rr.broker_url)
            assert r.get(key).decode() == rr.ids[first]
        await asyncio.sleep(2.5)
        if rr.engine == "redis":
            assert r.get(key) is None  # released by its owner when it expired
        # Whichever node gets it, the id opens a new session ("o"), as on one node.
        # (A stream read up to its first frame is aborted, which closed the first session
        # with 1002 before it expired; the second one is opened by a poll.)
        second = await s.open()
        if rr.engine == "redis":
            assert r.get(key).decode() == rr.ids[second]
        status, _, _ = await s.send("again")
        assert status == 204
        frame, _ = await s.receive("xhr-polling")
        assert frame == 'a["again"]'


@run(60)
async def test_send_answers_come_from_the_owner(rr):
    async with raw_session(rr.url + "/echo") as s:
        await s.open()
        upstreams = set()
        for _ in range(2):  # through both nodes
            status, body, upstream = await s.send_raw(b'["x"')
            assert (status, body) == (500, "Broken JSON encoding.")
            upstreams.add(upstream)
        assert len(upstreams) == 2
        for _ in range(2):
            assert (await s.send_raw(b""))[:2] == (500, "Payload expected.")
            assert (await s.send("j", transport="jsonp-polling"))[:2] == (200, "ok")
        frame, _ = await s.receive("xhr-polling")
        assert frame == 'a["j","j"]'
    async with raw_session(rr.url + "/echo") as unknown:
        for _ in range(2):
            assert (await unknown.send("nobody"))[0] == 404


@run(60)
async def test_big_messages_through_the_relay(rr):
    """A send and a poll answer of 1,048,000 bytes, both relayed: more than NATS's default
    max_payload (1 MiB less the relay's header room), so they travel in parts there, cut
    inside UTF-8 sequences; and just within the session queue's 1 MiB."""
    message = ("ż" + "x" * 8) * 104_800  # 1,048,000 bytes of UTF-8
    async with raw_session(rr.url + "/echo") as s:
        owner = await s.open()
        status, _, upstream = await s.send_raw(json.dumps([message], ensure_ascii=False).encode())
        assert (status, upstream != owner) == (204, True)
        await skip_turn(rr)
        frame, upstream = await s.receive("xhr-polling")
        assert upstream != owner
        assert json.loads(frame[1:]) == [message]
