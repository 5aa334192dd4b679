"""The Redis engine: what happens when Redis goes away or the pub/sub connection is cut
during traffic, application events in a consumer group surviving a worker's death,
commands from Redis (list and pub/sub channel, each run once), and the engine's
history semantics checked against the memory engine's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from cluster import (
    Client,
    api,
    api_ok,
    broker_server,
    eventually,
    nodes,
    publish_marker,
    ready,
    start_node,
    stop_node,
    wait_status,
)
from realtime_run import run

from support import ROOT

pytestmark = pytest.mark.timeout(120)


def unique(name: str) -> str:
    return f"{name}-{os.urandom(3).hex()}"


@pytest.fixture
def own_redis():
    """A Redis of this test's own, which it may kill and restart."""
    with broker_server("redis") as server:
        yield server


@pytest.fixture(scope="module")
def redis_nodes(redis_server):
    with nodes(redis_server.url, 3) as gws:
        yield gws


class Publisher:
    """Publishes 0, 1, 2, ... through a node's API every ``interval`` seconds, noting
    which publishes were acknowledged and which failed."""

    def __init__(self, gw, channel: str, interval: float = 0.02) -> None:
        self.gw = gw
        self.channel = channel
        self.interval = interval
        self.ok: list[int] = []
        self.failed: list[int] = []
        self.codes: set[str] = set()
        self.task: asyncio.Task | None = None
        self.stopping = False

    async def _run(self) -> None:
        i = 0
        while not self.stopping:
            status, body = await api(self.gw, "publish", channel=self.channel, data=i)
            if status == 200:
                self.ok.append(i)
            else:
                self.failed.append(i)
                self.codes.add(body["error"]["code"])
            i += 1
            await asyncio.sleep(self.interval)

    def start(self) -> Publisher:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        """Stop after the publish in flight (so that every publish is accounted for)."""
        assert self.task is not None
        self.stopping = True
        await asyncio.wait_for(self.task, 15)


async def received(client: Client, publisher: Publisher) -> list[int]:
    """What ``client`` received of ``publisher``'s stopped run: every publication before
    a marker published after it on the same channel."""
    marker = await publish_marker(publisher.gw, publisher.channel)
    return [m["data"] for m in await client.until_marker(marker, publisher.channel)]


async def check_delivery(client: Client, publisher: Publisher) -> None:
    """What ``client`` received of ``publisher``'s stopped run, checked: in order and
    once, every acknowledged publication, and nothing that was never published."""
    got = await received(client, publisher)
    assert got == sorted(set(got)), "out of order or duplicated"
    assert set(publisher.ok) <= set(got), set(publisher.ok) - set(got)
    assert set(got) <= set(publisher.ok) | set(publisher.failed)


@run(100)
async def test_redis_restart_during_traffic(own_redis):
    """Killed Redis: /readyz 503 on every node, publishes answer 503 ``unavailable``,
    clients stay connected. Restarted (empty: no persistence): /readyz 200 again, the
    channel starts a new epoch, and subscribers get every acknowledged publication,
    in order, once — before the outage and after it."""
    channel = unique("ticker")
    with nodes(own_redis.url, 2) as (a, b):
        sub = await Client.connect(a)
        first = await sub.ok("subscribe", channel=channel)
        publisher = Publisher(b, channel).start()
        await eventually(lambda: len(publisher.ok) >= 10)
        own_redis.kill()
        await asyncio.to_thread(wait_status, a, 503, 10)
        await asyncio.to_thread(wait_status, b, 503, 10)
        await eventually(lambda: len(publisher.failed) >= 3)
        assert publisher.codes == {"unavailable"}
        assert (await sub.ok("ping"))["pong"] is True  # the client is still connected
        before = list(publisher.ok)
        own_redis.start()
        await asyncio.to_thread(wait_status, a, 200, 15)
        await asyncio.to_thread(wait_status, b, 200, 15)
        count = len(publisher.ok)
        await eventually(lambda: len(publisher.ok) >= count + 10, timeout=10)
        await publisher.stop()
        await check_delivery(sub, publisher)
        # History did not survive (no persistence): a new epoch; an old position is not recovered.
        after = await api_ok(b, "history", channel=channel, limit=1)
        assert after["epoch"] != first["epoch"]
        assert after["offset"] == len(publisher.ok) - len(before) + 1  # and the marker
        other = await Client.connect(b)
        result = await other.ok("subscribe", channel=channel,
                                since={"offset": len(before), "epoch": first["epoch"]})
        assert result["recovered"] is False
        for client in (sub, other):
            await client.close()


@run(60)
async def test_pubsub_connection_cut_gap_is_filled(redis_server, redis_nodes):
    """The pub/sub connections are killed (CLIENT KILL TYPE pubsub) while publications
    flow on three channels, five times: each node reconnects, resubscribes and fills
    the gap from the history stream, so the subscriber misses nothing and sees nothing
    twice. Redis itself stayed up, and the publishing node's command connections with
    it: every publish is acknowledged, those running while the node reconnects too."""
    a, b, _c = redis_nodes
    channels = [unique("cut") for _ in range(3)]
    sub = await Client.connect(a)
    for channel in channels:
        await sub.ok("subscribe", channel=channel)
    publishers = [Publisher(b, channel, interval=0).start() for channel in channels]
    redis = redis_server.client()
    for _ in range(5):
        await eventually(lambda: len(redis.client_list(_type="pubsub")) >= 3)  # every node's
        target = sum(len(p.ok) for p in publishers) + 30
        await eventually(lambda t=target: sum(len(p.ok) for p in publishers) >= t, timeout=10)
        killed = redis.client_kill_filter(_type="pubsub")
        assert killed >= 3
    for publisher in publishers:
        await publisher.stop()
    assert [p.failed for p in publishers] == [[], [], []]
    markers = {channel: await publish_marker(b, channel) for channel in channels}
    got: dict[str, list] = {channel: [] for channel in channels}
    while markers:
        message = await sub.next("message", 10)
        channel = message["channel"]
        if message["data"] == markers.get(channel):
            del markers[channel]
        else:
            got[channel].append(message["data"])
    assert [got[p.channel] for p in publishers] == [p.ok for p in publishers]
    await sub.close()


WORKER_SCRIPT = """
import sys, time
from sockway.app_redis import RedisWorker
worker = RedisWorker(sys.argv[1], stream=sys.argv[2], consumer="doomed", claim_idle=60)
print("ready", flush=True)
@worker.on("*")
def hang(event, reply):
    print("got", event["id"], flush=True)
    time.sleep(120)   # killed while handling it
worker.run(timeout=60)
"""


@run(90)
async def test_events_redelivered_after_a_worker_dies(redis_server):
    """A worker takes events from the consumer group and is killed before acknowledging
    them: another worker claims them (XAUTOCLAIM) and handles each once."""
    from sockway.app_redis import RedisWorker

    stream = unique("events")
    gw = start_node(f"{redis_server.url}?events={stream}")
    doomed = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, redis_server.url, stream],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert (await asyncio.to_thread(doomed.stdout.readline)).startswith("ready")
        client = await Client.connect(gw)
        conn = client.conn
        for i in range(3):
            await client.ok("message", data=f"m{i}")
        await client.close()
        line = await asyncio.wait_for(asyncio.to_thread(doomed.stdout.readline), 10)
        assert line.startswith("got"), line
        doomed.kill()
        doomed.wait(5)

        handled: list[dict] = []
        rescuer = RedisWorker(redis_server.url, stream=stream, consumer="rescuer", claim_idle=0.5,
                              block=0.2)

        @rescuer.on("*")
        def collect(event, reply):
            handled.append(event)

        def until_all() -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len([e for e in handled if e.get("conn") == conn]) < 5:
                rescuer.run(timeout=0.3)
            rescuer.run(timeout=1.0)  # anything more would be a duplicate

        await asyncio.to_thread(until_all)
        # Each once; a redelivered event comes later than the ones after it: ``seq`` gives
        # the order back.
        mine = sorted((e for e in handled if e.get("conn") == conn), key=lambda e: e["seq"])
        assert [e["type"] for e in mine] == ["open", "message", "message", "message", "close"]
        assert [e["seq"] for e in mine] == [1, 2, 3, 4, 5]
        assert rescuer.claimed >= 1
        pending = redis_server.client().xpending(stream, "sockway")
        assert pending["pending"] == 0
        rescuer.close()
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(5)
        stop_node(gw)


@run(60)
async def test_commands_from_redis(redis_server, redis_nodes):
    """LPUSH onto sockway:commands: one node runs each command (forwarding it to the
    connection's node); PUBLISH on sockway:commands: one node reads the channel (it
    holds the lease), so a command published there runs once too."""
    from sockway.app import GatewayError
    from sockway.app_redis import RedisCommands

    a, b, _c = redis_nodes
    channel = unique("cmd")
    subs = [await Client.connect(a), await Client.connect(b)]
    for s in subs:
        await s.ok("subscribe", channel=channel)
    commands = RedisCommands(redis_server.url, timeout=5)
    result = await asyncio.to_thread(commands.publish, channel, "via list", True)
    assert result["offset"] == 1
    commands.publish(channel, "no answer asked")
    for s in subs:
        assert [m["data"] for m in await s.messages(2)] == ["via list", "no answer asked"]
    # A command for a connection on node b, whichever node pops it.
    await asyncio.to_thread(commands.send, subs[1].conn, "direct", True)
    assert (await subs[1].next("message"))["data"] == "direct"
    with pytest.raises(GatewayError) as refused:
        await asyncio.to_thread(commands.command, "publish", True, channel="bad channel!", data=1)
    assert refused.value.code == "bad_channel"
    # The pub/sub channel: exactly one node listens.
    r = redis_server.client()
    receivers = await eventually(lambda: r.pubsub_numsub("sockway:commands")[0][1])
    assert receivers == 1
    r.publish("sockway:commands", json.dumps({"op": "publish", "channel": channel, "data": "via pubsub"}))
    for s in subs:
        got = await s.messages(1)
        assert [m["data"] for m in got] == ["via pubsub"]
    marker = await publish_marker(a, channel)
    for s in subs:
        assert await s.until_marker(marker, channel) == []
    for s in subs:
        await s.close()
    commands.redis.close()


@run(60)
async def test_history_semantics_match_the_memory_engine(redis_server):
    """The same operations on the memory and Redis engines give the same answers:
    offsets, recovered, what history returns with since and limit, reset."""
    from sockway.brokers.base import HistoryPolicy, StreamPosition, resolve
    from sockway.brokers.memory import MemoryBroker
    from sockway.brokers.redis import RedisBroker

    memory = MemoryBroker()
    redis_broker = RedisBroker(redis_server.url + "?commands=off")
    await redis_broker.start()
    try:
        policy = HistoryPolicy(size=5)
        answers: dict[str, list] = {"memory": [], "redis": []}
        for name, broker in (("memory", memory), ("redis", redis_broker)):
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
            pub = await resolve(broker.publish(channel, b"\x00binary", policy))
            r = await resolve(broker.history(channel, policy, StreamPosition(8, reset.epoch)))
            out.append((r.recovered, [p.data for p in r.publications], pub.offset))
            none = await resolve(broker.history(channel, HistoryPolicy(size=0), None))
            out.append([p.offset for p in none.publications])
        assert answers["redis"] == answers["memory"]
    finally:
        await redis_broker.stop()


def test_readyz_and_health_report_the_broker(redis_server):
    gw = start_node(redis_server.url)
    try:
        assert ready(gw) == 200
        from cluster import http_get

        status, body = http_get(gw.url + "/sockway/health")
        assert status == 200 and body["ready"] is True and body["broker"] == "redis"
    finally:
        stop_node(gw)


@run(60)
async def test_quiet_channel_gap_is_filled_after_a_cut(redis_server, redis_nodes):
    """A channel that had no publication yet when a node's pub/sub connection was cut:
    what is published before the node is back is filled from the stream too."""
    a, b, _c = redis_nodes
    channel = unique("quiet")
    sub = await Client.connect(a)
    await sub.ok("subscribe", channel=channel)
    redis_server.client().client_kill_filter(_type="pubsub")
    for i in range(3):
        await api_ok(b, "publish", channel=channel, data=i)
    assert [m["data"] for m in await sub.messages(3)] == [0, 1, 2]
    assert await sub.until_marker(await publish_marker(b, channel), channel) == []
    await sub.close()
