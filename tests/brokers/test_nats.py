"""The NATS engine: NATS killed and restarted during traffic (JetStream keeps history
on disk), application events with a durable consumer surviving a worker's death,
commands over NATS request/reply (a queue group: each runs once), and the engine's
history semantics checked against the memory engine's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from cluster import (
    KEY,
    Client,
    NatsCluster,
    NatsServer,
    api_ok,
    eventually,
    nodes,
    publish_marker,
    require_module,
    start_node,
    stop_node,
    wait_status,
)
from realtime_run import run
from test_redis import Publisher, check_delivery

from support import ROOT

pytestmark = pytest.mark.timeout(120)


def unique(name: str) -> str:
    return f"{name}-{os.urandom(3).hex()}"


@pytest.fixture
def own_nats():
    require_module("nats")
    server = NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


@pytest.fixture
def nats_cluster():
    require_module("nats")
    cluster = NatsCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def nats_nodes(nats_server):
    with nodes(nats_server.url, 3) as gws:
        yield gws


@run(100)
async def test_nats_restart_during_traffic(own_nats):
    """Killed NATS: /readyz 503 on every node, publishes answer 503 ``unavailable``,
    clients stay connected. Restarted on the same store: /readyz 200, the channel keeps
    its epoch and history (JetStream file storage), and the subscriber gets every
    acknowledged publication in order, once, the gap filled from the stream."""
    channel = unique("ticker")
    with nodes(own_nats.url, 2) as (a, b):
        sub = await Client.connect(a)
        first = await sub.ok("subscribe", channel=channel)
        publisher = Publisher(b, channel).start()
        await eventually(lambda: len(publisher.ok) >= 10)  # some publications before the outage
        own_nats.kill()
        await asyncio.to_thread(wait_status, a, 503, 10)
        await asyncio.to_thread(wait_status, b, 503, 10)
        # A publish in flight when NATS died waits for its acknowledgement until the
        # timeout (5 s); the next ones fail at once.
        await eventually(lambda: len(publisher.failed) >= 3, timeout=10)
        assert publisher.codes == {"unavailable"}
        assert (await sub.ok("ping"))["pong"] is True
        own_nats.start()
        await asyncio.to_thread(wait_status, a, 200, 15)
        await asyncio.to_thread(wait_status, b, 200, 15)
        count = len(publisher.ok)
        await eventually(lambda: len(publisher.ok) >= count + 10, timeout=15)
        await publisher.stop()
        assert len(publisher.ok) >= count + 10
        await check_delivery(sub, publisher)
        history = await api_ok(b, "history", channel=channel, limit=1)
        assert history["epoch"] == first["epoch"]
        other = await Client.connect(b)
        result = await other.ok("subscribe", channel=channel, since={"offset": 1, "epoch": first["epoch"]})
        assert result["recovered"] is True
        for client in (sub, other):
            await client.close()


WORKER_SCRIPT = """
import sys, time
from sockway.app_nats import NatsWorker
worker = NatsWorker(sys.argv[1], prefix=sys.argv[2], ack_wait=1.0, batch=1)
@worker.on("*")
def hang(event, reply):
    print("got", event["id"], flush=True)
    time.sleep(120)   # killed while handling it
print("ready", flush=True)
worker.run(timeout=60)
"""


@run(90)
async def test_events_redelivered_after_a_worker_dies(nats_server):
    """A worker takes an event from the durable consumer and is killed before
    acknowledging it: JetStream gives it to another worker after ack_wait, and every
    event is handled once."""
    from sockway.app_nats import NatsWorker

    prefix = unique("ev")  # with a '-': not a character of stream names, replaced by both sides alike
    gw = start_node(f"{nats_server.url}?events=on&prefix={prefix}")
    doomed = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, nats_server.url, prefix],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert (await asyncio.to_thread(doomed.stdout.readline)).startswith("ready")
        client = await Client.connect(gw)
        conn = client.conn
        for i in range(3):
            await client.ok("message", data=f"m{i}")
        await client.close()
        line = await asyncio.wait_for(asyncio.to_thread(doomed.stdout.readline), 15)
        assert line.startswith("got"), line
        doomed.kill()
        doomed.wait(5)

        handled: list[dict] = []
        rescuer = NatsWorker(nats_server.url, prefix=prefix, ack_wait=1.0)

        @rescuer.on("*")
        def collect(event, reply):
            handled.append(event)

        def until_all() -> None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len([e for e in handled if e.get("conn") == conn]) < 5:
                rescuer.run(timeout=0.5)
            rescuer.run(timeout=1.5)  # anything more would be a duplicate

        await asyncio.to_thread(until_all)
        mine = sorted((e for e in handled if e.get("conn") == conn), key=lambda e: e["seq"])
        assert [e["type"] for e in mine] == ["open", "message", "message", "message", "close"]
        assert [e["seq"] for e in mine] == [1, 2, 3, 4, 5]
        assert rescuer.redelivered >= 1
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(5)
        stop_node(gw)


@run(60)
async def test_commands_over_nats(nats_server, nats_nodes):
    """Requests on sockway.commands: one node (queue group) runs each and answers;
    a command for a connection on another node is forwarded there."""
    import nats as nats_client

    from sockway.app import GatewayError
    from sockway.app_nats import NatsCommands

    a, b, _c = nats_nodes
    channel = unique("cmd")
    subs = [await Client.connect(a), await Client.connect(b)]
    for s in subs:
        await s.ok("subscribe", channel=channel)
    nc = await nats_client.connect(nats_server.url)
    reply = await nc.request("sockway.commands", json.dumps(
        {"op": "publish", "channel": channel, "data": "via request"}).encode(), timeout=5)
    assert json.loads(reply.data)["result"]["offset"] == 1
    await nc.publish("sockway.commands", json.dumps(
        {"op": "publish", "channel": channel, "data": "fire and forget"}).encode())
    await nc.flush()
    for s in subs:
        assert [m["data"] for m in await s.messages(2)] == ["via request", "fire and forget"]
    marker = await publish_marker(a, channel)
    for s in subs:
        assert await s.until_marker(marker, channel) == []
    await nc.close()
    commands = NatsCommands(nats_server.url, timeout=5)
    try:
        await asyncio.to_thread(commands.send, subs[1].conn, "direct")
        assert (await subs[1].next("message"))["data"] == "direct"
        with pytest.raises(GatewayError) as refused:
            await asyncio.to_thread(commands.send, "0badc0de.1", "nobody")
        assert refused.value.code == "not_found"
    finally:
        await asyncio.to_thread(commands.close)
    for s in subs:
        await s.close()


@run(60)
async def test_history_semantics_match_the_memory_engine(nats_server):
    from sockway.brokers.base import HistoryPolicy, StreamPosition, resolve
    from sockway.brokers.memory import MemoryBroker
    from sockway.brokers.nats import NatsBroker

    memory = MemoryBroker()
    nats_broker = NatsBroker(nats_server.url + "?commands=off")
    await nats_broker.start()
    try:
        policy = HistoryPolicy(size=5)
        answers: dict[str, list] = {"memory": [], "nats": []}
        for name, broker in (("memory", memory), ("nats", nats_broker)):
            channel = unique("parity")
            out = answers[name]
            unknown = await resolve(broker.history(unique("nobody"), policy))
            out.append((unknown.position.offset, unknown.publications))
            broker.interest(channel, True)  # a subscriber here: the channel's state is kept
            first = await resolve(broker.history(channel, policy))
            epoch = first.position.epoch
            out.append(first.position.offset)
            for i in range(8):
                pub = await resolve(broker.publish(channel, {"n": i}, policy))
                out.append((pub.offset, pub.epoch == epoch))
            for since in range(0, 10):
                for limit in (None, 0, 2):
                    r = await resolve(broker.history(channel, policy, StreamPosition(since, epoch), limit))
                    out.append((since, limit, r.recovered, [p.offset for p in r.publications],
                                [p.data for p in r.publications], r.position.offset))
            for limit in (None, 0, 3, 10):
                r = await resolve(broker.history(channel, policy, None, limit))
                out.append((limit, [p.offset for p in r.publications]))
            r = await resolve(broker.history(channel, policy, StreamPosition(3, "other")))
            out.append(r.recovered)
            reset = await resolve(broker.reset_history(channel))
            out.append((reset.offset, reset.epoch != epoch))
            r = await resolve(broker.history(channel, policy, StreamPosition(8, epoch)))
            out.append((r.recovered, r.position.offset))
            pub = await resolve(broker.publish(channel, b"\\x00binary", policy))
            r = await resolve(broker.history(channel, policy, StreamPosition(8, reset.epoch)))
            out.append((r.recovered, [p.data for p in r.publications], pub.offset))
        assert answers["nats"] == answers["memory"]
    finally:
        await nats_broker.stop()


def test_engines_are_selected_by_url():
    from sockway.brokers import create_broker

    assert create_broker("memory://").name == "memory"
    assert create_broker("redis://127.0.0.1:1/0?prefix=x").name == "redis"
    assert create_broker("nats://127.0.0.1:1").name == "nats"
    with pytest.raises(ValueError, match="unknown broker"):
        create_broker("kafka://x")



@contextlib.asynccontextmanager
async def two_engines(url: str):
    """Two NATS engines (two nodes' brokers, without command handling), started."""
    from sockway.brokers.nats import NatsBroker

    engines = (NatsBroker(url + "?commands=off"), NatsBroker(url + "?commands=off"))
    for engine in engines:
        await engine.start()
    try:
        yield engines
    finally:
        for engine in engines:
            await engine.stop()


@run(60)
async def test_a_burst_of_publishes_is_appended_in_batches(nats_server):
    """Publications a node makes to one channel while an append is in flight go out
    together as one stored message: offsets stay consecutive and in call order, another
    node delivers every one once and in order, and history and recovery read inside
    batches (from any offset, a batch's middle included)."""
    from sockway.brokers.base import HistoryPolicy, StreamPosition, resolve

    async with two_engines(nats_server.url) as (publisher, subscriber):
        channel = unique("burst")
        policy = HistoryPolicy(size=1000)
        got: list[tuple[int, object]] = []
        subscriber.on_publication = (
            lambda pub: got.append((pub.offset, pub.data.value)) if pub.channel == channel else None)
        await resolve(subscriber.interest(channel, True))
        epoch = (await resolve(subscriber.history(channel, policy))).position.epoch

        pubs = await asyncio.gather(*(resolve(publisher.publish(channel, {"n": n}, policy)) for n in range(300)))
        assert [p.offset for p in pubs] == list(range(1, 301))
        assert [p.data.value for p in pubs] == [{"n": n} for n in range(300)]
        assert {p.epoch for p in pubs} == {epoch}
        assert 0 < publisher.stats["batches"] < 300, dict(publisher.stats)

        await eventually(lambda: len(got) >= 300, timeout=10)
        assert got == [(n + 1, {"n": n}) for n in range(300)]
        assert subscriber.stats["gaps"] == 0 and subscriber.stats["duplicates"] == 0

        for since in (0, 1, 150, 299, 300):
            r = await resolve(subscriber.history(channel, policy, StreamPosition(since, epoch)))
            assert r.recovered and [p.offset for p in r.publications] == list(range(since + 1, 301)), since
        last = await resolve(subscriber.history(channel, HistoryPolicy(size=1000), None, 5))
        assert [p.data.value for p in last.publications] == [{"n": n} for n in range(295, 300)]


@run(60)
async def test_first_fan_out_messages_out_of_order(nats_server):
    """Fan-out messages of two nodes can reach a third out of order. Before anything was
    delivered there, the first one to arrive may not be next after what its subscribers
    were given (the first history read): the node fills the gap from the stream, so
    offsets 1 and 2 arriving as 2, 1 are delivered 1, 2."""
    from sockway.brokers.base import HistoryPolicy, resolve
    from sockway.brokers.wire import publication_body

    async with two_engines(nats_server.url) as (writer, reader):
        channel = unique("order")
        policy = HistoryPolicy(size=10)
        got: list[int] = []
        reader.on_publication = lambda pub: got.append(pub.offset) if pub.channel == channel else None
        await resolve(reader.interest(channel, True))
        assert await reader.subscribed(channel)
        await resolve(reader.history(channel, policy))  # what subscribers here start from
        # Two appends whose fan-out messages have not been sent yet (as if two other
        # nodes had just appended them).
        stream, subject = await writer._stream(channel, policy)
        head = await writer._head(stream, subject)
        first, message1 = await writer._append(stream, subject, head, [publication_body("one", None, 0.0)])
        second, message2 = await writer._append(stream, subject, first, [publication_body("two", None, 0.0)])
        reader._on_channel_message(channel, b'p{"s":%d,' % second[0] + message2[1:])
        reader._on_channel_message(channel, b'p{"s":%d,' % first[0] + message1[1:])
        await eventually(lambda: len(got) >= 2, timeout=10)
        assert got == [first[1], second[1]] == [1, 2]


@run(60)
async def test_nodes_starting_together_share_streams_and_buckets(nats_server):
    """Nodes that make the same history stream, presence and sessions buckets and events
    stream at the same moment all end up using the one JetStream made: the creates that
    lose the race (answered "subjects overlap" or "name in use") join the winner's."""
    from sockway.brokers.base import HistoryPolicy
    from sockway.brokers.nats import NatsBroker

    policy = HistoryPolicy(size=10)
    for round_ in range(10):
        prefix = unique("race").replace("-", "")
        engines = [NatsBroker(f"{nats_server.url}?commands=off&prefix={prefix}") for _ in range(6)]
        for engine in engines:
            await engine.start()
        try:
            made = await asyncio.gather(*(make() for engine in engines for make in (
                engine._sessions_bucket, engine._bucket, lambda e=engine: e._stream("room", policy)) * 2))
            streams = {m for m in made if isinstance(m, tuple)}
            assert len(streams) == 1, (round_, streams)
            await made[0].put("k", b"v")  # one sessions bucket, seen by every node
            for engine in engines:
                assert (await (await engine._sessions_bucket()).get("k")).value == b"v"
        finally:
            for engine in engines:
                await engine.stop()


@run(60)
async def test_a_storm_of_history_reads_walks_the_stream_once(nats_server):
    """200 clients recovering on one channel at once (a node went away and they all
    resubscribed here) share one walk of the channel's stream, and each gets exactly
    what it missed."""
    from sockway.brokers.base import HistoryPolicy, StreamPosition, resolve

    async with two_engines(nats_server.url) as (publisher, node):
        channel = unique("storm")
        policy = HistoryPolicy(size=100)
        for n in range(60):
            pub = await resolve(publisher.publish(channel, {"n": n}, policy))
        await resolve(node.interest(channel, True))
        gets = 0
        get_msg = node.js.get_msg

        async def counted(*args, **kwargs):
            nonlocal gets
            gets += 1
            return await get_msg(*args, **kwargs)

        node.js.get_msg = counted
        walks = node.stats["history_walks"]
        sinces = [StreamPosition(k % 50, pub.epoch) for k in range(200)]
        results = await asyncio.gather(*(resolve(node.history(channel, policy, since)) for since in sinces))
        for since, result in zip(sinces, results, strict=True):
            assert result.recovered
            assert [p.offset for p in result.publications] == list(range(since.offset + 1, 61))
        # One head read per request, and 61 direct gets per walk (60 messages, then "none").
        assert 1 <= node.stats["history_walks"] - walks <= 3, dict(node.stats)
        assert gets <= 200 + 3 * 61, gets


async def broker_stats(gw) -> dict:
    def get() -> dict:
        request = urllib.request.Request(gw.url + "/api/stats", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())["result"]["broker"]

    return await asyncio.to_thread(get)


@run(100)
async def test_a_nats_cluster_loses_a_server(nats_cluster):
    """A node given the seed list of a three-server NATS cluster, with JetStream
    replicas=3, during traffic: the server leading the channel's history stream is
    killed (another takes the lead), and the server the node is connected to is killed
    (the node moves to another; when it is the same server, both at once). The
    subscriber stays connected and gets every acknowledged publication in order, once;
    history and recovery cover the whole channel."""
    channel = unique("ha")
    node = start_node(f"{nats_cluster.url}?replicas=3")
    try:
        sub = await Client.connect(node)
        first = await sub.ok("subscribe", channel=channel)
        publisher = Publisher(node, channel).start()
        await eventually(lambda: len(publisher.ok) >= 20, timeout=10)
        leader, _stream = await nats_cluster.stream_leader("SOCKWAY_H_")
        used = nats_cluster.member((await broker_stats(node))["server"])
        for victim in [leader] if leader is used else [leader, used]:
            victim.kill()
            count = len(publisher.ok)
            await eventually(lambda c=count: len(publisher.ok) >= c + 30, timeout=30)
            if victim is not used:
                victim.start()  # back into the cluster, before losing another one
                await nats_cluster.stream_leader("SOCKWAY_H_", timeout=20)
        await publisher.stop()
        broker = await broker_stats(node)
        assert broker["ready"] is True and not used.url.endswith(broker["server"]), broker
        await check_delivery(sub, publisher)
        # What was acknowledged is in the channel's history, read from the survivors.
        history = await api_ok(node, "history", channel=channel, limit=100)
        assert history["epoch"] == first["epoch"]
        stored = [p["data"] for p in history["publications"]]
        assert set(publisher.ok[-90:]) <= set(stored), set(publisher.ok[-90:]) - set(stored)
        other = await Client.connect(node)
        since = history["offset"] - 50  # within the channel's history_size (100)
        result = await other.ok("subscribe", channel=channel, since={"offset": since, "epoch": first["epoch"]})
        assert result["recovered"] is True, result
        assert [p["offset"] for p in result["publications"]] == list(range(since + 1, history["offset"] + 1))
        for client in (sub, other):
            await client.close()
    finally:
        stop_node(node)


def test_a_worker_that_comes_first_makes_the_events_stream_with_replicas(nats_cluster):
    """A NatsWorker started before any gateway makes the events stream, with as many
    copies as it is told (the gateway's replicas option), on every server's behalf."""
    import nats as nats_py

    from sockway.app_nats import NatsWorker

    prefix = unique("first")
    worker = NatsWorker(nats_cluster.url, prefix=prefix, replicas=3)
    assert worker.run(timeout=0.5) == 0

    async def replicas() -> int:
        nc = await nats_py.connect(nats_cluster.url.split(","), connect_timeout=2)
        try:
            return (await nc.jetstream().stream_info(worker.stream)).config.num_replicas
        finally:
            await nc.close()

    assert asyncio.run(replicas()) == 3
