"""Channels across gateway nodes (real processes) on each engine: memory (one node),
Redis and NATS (three nodes sharing one broker).

Each test runs the same client-visible behaviour on every engine: publications reach
every subscriber on every node in offset order exactly once, whoever publishes (a
client on another node, or the HTTP API of a third); presence and join/leave span the
nodes; a client that reconnects to another node recovers what it missed; commands for
a connection reach it through any node's API.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from cluster import Client, Closed, api, api_ok, eventually, nodes, publish_marker, start_node, stop_node
from realtime_run import run

pytestmark = pytest.mark.timeout(90)


def unique(name: str) -> str:
    return f"{name}-{os.urandom(3).hex()}"


@run(60)
async def test_delivery_in_order_exactly_once(cluster):
    channel = unique("news")
    a, b, c = cluster.pick(0), cluster.pick(1), cluster.pick(2)
    subscribers = [await Client.connect(a), await Client.connect(a), await Client.connect(b)]
    for s in subscribers:
        await s.ok("subscribe", channel=channel)
    publisher = await Client.connect(c)
    # 40 publishes sent back to back (no waiting for replies), then 20 through the
    # API of another node.
    for i in range(40):
        await publisher.ws.send(f'{{"op": "publish", "channel": "{channel}", "data": {i}, "id": {i}}}')
    replies = [await publisher.next("reply") for _ in range(40)]
    assert all("result" in r for r in replies), replies
    assert sorted(r["result"]["offset"] for r in replies) == list(range(1, 41))
    for i in range(40, 60):
        result = await api_ok(b, "publish", channel=channel, data=i)
        assert result["offset"] == i + 1
    for s in subscribers:
        got = await s.messages(60)
        assert [m["offset"] for m in got] == list(range(1, 61))
        assert [m["data"] for m in got] == list(range(60))
        assert len({m["epoch"] for m in got}) == 1
    marker = await publish_marker(b, channel)
    for s in subscribers:
        assert await s.until_marker(marker, channel) == []
    for s in [*subscribers, publisher]:
        await s.close()


@run(60)
async def test_presence_and_join_leave_across_nodes(cluster):
    channel = unique("room")
    a, b, c = cluster.pick(0), cluster.pick(1), cluster.pick(2)
    x = await Client.connect(a)
    await x.ok("subscribe", channel=channel)
    y = await Client.connect(b)
    await y.ok("subscribe", channel=channel)
    join = await x.next("join")
    assert join["conn"] == y.conn and join["channel"] == channel
    assert join["info"]["conn"] == y.conn
    present = await y.ok("presence", channel=channel)
    assert set(present["clients"]) == {x.conn, y.conn}
    result = await api_ok(c, "presence", channel=channel)
    assert set(result["clients"]) == {x.conn, y.conn}
    await y.close()
    leave = await x.next("leave")
    assert leave["conn"] == y.conn

    async def only_x():
        return set((await api_ok(c, "presence", channel=channel))["clients"]) == {x.conn}

    await eventually(only_x)
    await x.close()


@run(60)
async def test_recovery_after_moving_to_another_node(cluster):
    channel = unique("feed")
    small = unique("small:feed")
    a, b = cluster.pick(0), cluster.pick(1)
    client = await Client.connect(a)
    sub = await client.ok("subscribe", channel=channel)
    small_sub = await client.ok("subscribe", channel=small)
    for i in range(3):
        await api_ok(a, "publish", channel=channel, data=f"live {i}")
    seen = await client.messages(3)
    last = {"offset": seen[-1]["offset"], "epoch": sub["epoch"]}
    await api_ok(a, "publish", channel=small, data="live")
    small_seen = await client.next("message")
    assert small_seen["channel"] == small and small_seen["offset"] == 1
    await client.close()
    # Missed while away: 3 on the channel, 10 on one that keeps only 5.
    for i in range(3):
        await api_ok(b, "publish", channel=channel, data=f"missed {i}")
    for i in range(10):
        await api_ok(b, "publish", channel=small, data=i)
    back = await Client.connect(b)
    result = await back.ok("subscribe", channel=channel, since=last)
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == ["missed 0", "missed 1", "missed 2"]
    assert [p["offset"] for p in result["publications"]] == [4, 5, 6]
    assert result["offset"] == 6 and result["epoch"] == sub["epoch"]
    lost = await back.ok("subscribe", channel=small, since={"offset": 1, "epoch": small_sub["epoch"]})
    assert lost["recovered"] is False
    assert [p["data"] for p in lost["publications"]] == [5, 6, 7, 8, 9]
    # A position from another epoch is not recovered either.
    other = await back.ok("subscribe", channel=unique("fresh"), since={"offset": 1, "epoch": "nope"})
    assert other["recovered"] is False
    await api_ok(a, "publish", channel=channel, data="after")
    live = await back.next("message")
    assert live["offset"] == 7 and live["data"] == "after"
    await back.close()


@run(60)
async def test_commands_reach_a_connection_through_any_node(cluster):
    channel = unique("direct")
    a, b = cluster.pick(0), cluster.pick(1)
    client = await Client.connect(a)
    assert (await api_ok(b, "send", conn=client.conn, data="hello"))["conn"] == client.conn
    assert (await client.next("message"))["data"] == "hello"
    sub = await api_ok(b, "subscribe", conn=client.conn, channel=channel)
    assert sub["channel"] == channel
    await api_ok(b, "publish", channel=channel, data=1)
    assert (await client.next("message"))["data"] == 1
    assert (await api_ok(b, "unsubscribe", conn=client.conn, channel=channel))["unsubscribed"] is True
    # Unknown connections, on a node that does not exist or on this one: not found.
    for conn in ("0badc0de.1", f"{client.conn.partition('.')[0]}.ffff"):
        status, body = await api(b, "send", conn=conn, data="x")
        assert status == 404 and body["error"]["code"] == "not_found", body
    await api_ok(b, "close", conn=client.conn, code=4000, reason="bye")
    with pytest.raises(Closed) as closed:
        await client.next(timeout=3)
    assert (closed.value.code, closed.value.reason) == (4000, "bye")


@run(60)
async def test_history_survives_a_gateway_restart(network_url):
    broker_url = network_url
    channel = unique("log")
    first = start_node(broker_url)
    try:
        published = [await api_ok(first, "publish", channel=channel, data=i) for i in range(5)]
    finally:
        stop_node(first)
    second = start_node(broker_url)
    try:
        history = await api_ok(second, "history", channel=channel)
        assert [p["data"] for p in history["publications"]] == list(range(5))
        assert history["epoch"] == published[0]["epoch"] and history["offset"] == 5
        client = await Client.connect(second)
        result = await client.ok("subscribe", channel=channel,
                                 since={"offset": 2, "epoch": published[0]["epoch"]})
        assert result["recovered"] is True
        assert [p["data"] for p in result["publications"]] == [2, 3, 4]
        await client.close()
    finally:
        stop_node(second)


@run(60)
async def test_forward_to_a_node_that_is_gone(network_url):
    broker_url = network_url
    gone = start_node(broker_url)
    client = await Client.connect(gone)
    conn = client.conn
    stop_node(gone)
    await client.close()
    with nodes(broker_url, 1) as (other,):
        started = asyncio.get_running_loop().time()
        status, body = await api(other, "send", conn=conn, data="x")
        assert status == 404 and body["error"]["code"] == "not_found"
        assert asyncio.get_running_loop().time() - started < 3


@run(60)
async def test_presence_of_a_dead_node_expires(network_url):
    """A node killed without a chance to say goodbye: its members' presence entries
    expire after presence_ttl, and subscribers on the other nodes get their leave."""
    prefix = unique("pres").replace("-", "")
    url = f"{network_url}?presence_ttl=1.5&prefix={prefix}"
    channel = unique("lobby")
    survivor = start_node(url)
    doomed = start_node(url)
    try:
        x = await Client.connect(survivor)
        await x.ok("subscribe", channel=channel)
        y = await Client.connect(doomed)
        await y.ok("subscribe", channel=channel)
        assert (await x.next("join"))["conn"] == y.conn
        doomed.proc.kill()
        doomed.proc.wait(5)
        leave = await x.next("leave", timeout=8)
        assert leave["conn"] == y.conn
        result = await api_ok(survivor, "presence", channel=channel)
        assert set(result["clients"]) == {x.conn}
        await x.close()
    finally:
        stop_node(doomed)
        stop_node(survivor)


@run(60)
async def test_concurrent_publishers_on_several_nodes(cluster):
    """Publishers on every node at once, to one channel: offsets are assigned once each
    (no gap, no repeat), and every subscriber sees them all in offset order."""
    channel = unique("busy")
    subscribers = [await Client.connect(cluster.pick(i)) for i in range(3)]
    for s in subscribers:
        await s.ok("subscribe", channel=channel)

    async def publish_from(i: int) -> list[int]:
        return [(await api_ok(cluster.pick(i), "publish", channel=channel, data=f"{i}-{n}"))["offset"]
                for n in range(20)]

    offsets = await asyncio.gather(*(publish_from(i) for i in range(3)))
    assert sorted(o for batch in offsets for o in batch) == list(range(1, 61))
    for s in subscribers:
        got = await s.messages(60)
        assert [m["offset"] for m in got] == list(range(1, 61))
        for i in range(3):  # each publisher's own order is kept
            assert [m["data"] for m in got if m["data"].startswith(f"{i}-")] == [f"{i}-{n}" for n in range(20)]
    marker = await publish_marker(cluster.pick(0), channel)
    for s in subscribers:
        assert await s.until_marker(marker, channel) == []
        await s.close()
