"""Recovery after a disconnection: a client remembers (offset, epoch), loses its
connection (closed by the application through the API, or its socket dropped), N
publications are made meanwhile (through the HTTP API and through ZeroMQ), and the
client resubscribes with ``since``: the reply carries exactly the N it missed, in
order, with ``recovered: true``, then live publications follow, with no duplicate.
A history too short, a wrong epoch or a position from the future give
``recovered: false``. Broadcast endpoints replay their last ``history`` messages."""

from __future__ import annotations

import asyncio
import itertools
import json

import aiohttp
import pytest
import zmq
import zmq.asyncio

from realtime import KEY, Api, ChannelsClient, RawWS, SockJSWS, XhrSession, eventually, run, zmq_address
from support import config_gateway

_names = itertools.count(1)


@pytest.fixture(scope="module")
def gw():
    pull = zmq_address()
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[zeromq]
pull = "{pull}"

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[endpoint]]
prefix = "/chx"
mode = "channels"
heartbeat_delay = 0.5

[[endpoint]]
prefix = "/chat"
mode = "broadcast"
history = 15

[[namespace]]
name = ""
publish = "open"
history_size = 100

[[namespace]]
name = "small"
publish = "open"
history_size = 5

[[namespace]]
name = "nohist"
publish = "open"

[[namespace]]
name = "stress"
history_size = 3000
"""
    with config_gateway(config) as proc:
        proc.pull = pull
        yield proc


class Publishers:
    """Publishing through the HTTP API and through a ZeroMQ PUSH socket."""

    def __init__(self, api: Api, pull: str) -> None:
        self.api = api
        self.ctx = zmq.asyncio.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 1000)
        self.push.connect(pull)

    async def via_api(self, channel: str, data) -> int:
        return (await self.api("publish", channel=channel, data=data))["offset"]

    async def via_zmq(self, channel: str, items: list) -> None:
        """One item as a JSON command, one as two frames, the rest as a JSON array."""
        first, second, *rest = items
        await self.push.send(json.dumps({"op": "publish", "channel": channel, "data": first}).encode())
        await self.push.send_multipart([channel.encode(), json.dumps(second).encode()])
        if rest:
            await self.push.send(json.dumps([{"op": "publish", "channel": channel, "data": d}
                                             for d in rest]).encode())

    async def wait_offset(self, channel: str, offset: int) -> None:
        async def reached():
            return (await self.api("history", channel=channel, limit=0))["offset"] >= offset

        await eventually(reached)

    def close(self) -> None:
        self.push.close(linger=0)
        self.ctx.term()


async def _disconnect(how: str, client: ChannelsClient, api: Api, gw) -> None:
    if how == "api_close":
        await api("close", conn=client.conn, code=4000, reason="kicked")
        closed = await client.closed()
        assert (closed.code, closed.reason) == (4000, "kicked")
    else:
        await client.drop()

    async def gone():
        _status, body = await api.get("/api/stats")
        return body["result"]["endpoints"]["/ch"]["connections"] == 0

    await eventually(gone)


@pytest.mark.parametrize("how", ["api_close", "drop"])
@pytest.mark.parametrize("sockjs", [pytest.param(False, id="raw"), pytest.param(True, id="sockjs")])
@run()
async def test_recovery_exact(gw, how, sockjs):
    channel = f"rec{next(_names)}"
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        pubs = Publishers(api, gw.pull)
        try:
            c = await ChannelsClient.connect(gw, "/ch", sockjs=sockjs)
            sub = await c.ok("subscribe", channel=channel)
            assert sub["recovered"] is True
            for i in range(3):
                await pubs.via_api(channel, {"seen": i})
            seen = await c.messages(3)
            last = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
            assert last["epoch"] == sub["epoch"]
            await _disconnect(how, c, api, gw)
            # Seven publications while away: three over HTTP, four over ZeroMQ.
            missed = [{"missed": i} for i in range(7)]
            for data in missed[:3]:
                await pubs.via_api(channel, data)
            await pubs.via_zmq(channel, missed[3:])
            await pubs.wait_offset(channel, last["offset"] + 7)
            # Back, with the position.
            c = await ChannelsClient.connect(gw, "/ch", sockjs=not sockjs)
            result = await c.ok("subscribe", channel=channel, since=last)
            assert result["recovered"] is True, result
            assert [p["data"] for p in result["publications"]] == missed
            assert [p["offset"] for p in result["publications"]] == list(
                range(last["offset"] + 1, last["offset"] + 8))
            assert result["offset"] == last["offset"] + 7 and result["epoch"] == last["epoch"]
            # Then live ones, and nothing twice.
            await pubs.via_api(channel, "live1")
            await pubs.via_zmq(channel, ["live2", "live3"])
            live = await c.messages(3)
            assert [m["data"] for m in live] == ["live1", "live2", "live3"]
            assert [m["offset"] for m in live] == list(range(last["offset"] + 8, last["offset"] + 11))
            # Nothing twice: a marker published now on the channel is the next thing.
            await pubs.via_api(channel, "marker")
            assert await c.next() == {"type": "message", "channel": channel, "offset": last["offset"] + 11,
                                      "epoch": last["epoch"], "data": "marker"}
            await c.close()
        finally:
            pubs.close()


@run()
async def test_recovery_nothing_missed_and_not_recoverable(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        c = await ChannelsClient.connect(gw, "/ch")
        # Nothing missed: recovered, nothing to replay.
        sub = await c.ok("subscribe", channel="steady")
        await api("publish", channel="steady", data=1)
        msg = await c.next("message")
        await c.ok("unsubscribe", channel="steady")
        position = {"offset": msg["offset"], "epoch": msg["epoch"]}
        again = await c.ok("subscribe", channel="steady", since=position)
        assert again["recovered"] is True and again["publications"] == []
        # Wrong epoch: not recovered, nothing replayed.
        await c.ok("unsubscribe", channel="steady")
        wrong = await c.ok("subscribe", channel="steady", since={"offset": msg["offset"], "epoch": "bogus"})
        assert wrong["recovered"] is False and wrong["publications"] == []
        assert wrong["epoch"] == sub["epoch"]
        # A position from the future.
        await c.ok("unsubscribe", channel="steady")
        future = await c.ok("subscribe", channel="steady", since={"offset": msg["offset"] + 50,
                                                                  "epoch": msg["epoch"]})
        assert future["recovered"] is False
        # History overflow: five kept, eight missed.
        await c.ok("subscribe", channel="small:x")
        await api("publish", channel="small:x", data="before")
        before = await c.next("message")
        await c.ok("unsubscribe", channel="small:x")
        for i in range(8):
            await api("publish", channel="small:x", data=i)
        over = await c.ok("subscribe", channel="small:x", since={"offset": before["offset"],
                                                                 "epoch": before["epoch"]})
        assert over["recovered"] is False, over
        assert over["offset"] == before["offset"] + 8
        # Exactly five missed fit.
        await c.ok("unsubscribe", channel="small:x")
        for i in range(5):
            await api("publish", channel="small:x", data=i)
        fits = await c.ok("subscribe", channel="small:x",
                          since={"offset": over["offset"], "epoch": over["epoch"]})
        assert fits["recovered"] is True and [p["data"] for p in fits["publications"]] == [0, 1, 2, 3, 4]
        # No history: whatever was missed is gone.
        await c.ok("subscribe", channel="nohist:x")
        keeper = await ChannelsClient.connect(gw, "/ch")  # keeps the channel alive
        await keeper.ok("subscribe", channel="nohist:x")
        await api("publish", channel="nohist:x", data=0)
        first = await c.next("message")
        await c.ok("unsubscribe", channel="nohist:x")
        await api("publish", channel="nohist:x", data=1)
        lost = await c.ok("subscribe", channel="nohist:x", since={"offset": first["offset"],
                                                                  "epoch": first["epoch"]})
        assert lost["recovered"] is False and lost["publications"] == []
        await c.close()
        await keeper.close()


@run()
async def test_recovery_epoch_changes_when_history_is_gone(gw):
    """With no history kept, a channel nobody listens to is forgotten: a client coming
    back with an old position must be told it cannot recover."""
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        c = await ChannelsClient.connect(gw, "/ch")
        await c.ok("subscribe", channel="nohist:gone")
        await api("publish", channel="nohist:gone", data=0)
        msg = await c.next("message")
        await c.close()
        await eventually(lambda: _no_clients(api))
        await api("publish", channel="nohist:gone", data=1)
        c = await ChannelsClient.connect(gw, "/ch")
        result = await c.ok("subscribe", channel="nohist:gone", since={"offset": msg["offset"],
                                                                       "epoch": msg["epoch"]})
        assert result["recovered"] is False and result["publications"] == []
        await c.close()


async def _no_clients(api: Api) -> bool:
    return (await api.stats())["endpoints"]["/ch"]["connections"] == 0


@run()
async def test_broadcast_history_replay(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        speaker = await RawWS.connect(gw.ws_url + "/chat/websocket")
        # 20 messages: 12 from a client, 8 from the application.
        for i in range(12):
            await speaker.send_text(f"client {i}")
        for i in range(12):
            assert await speaker.recv_text() == f"client {i}"
        for i in range(8):
            await api("broadcast", endpoint="/chat", data={"app": i})
        sent = [f"client {i}" for i in range(12)] + [json.dumps({"app": i}, separators=(",", ":"))
                                                     for i in range(8)]
        for expected in sent[12:]:
            assert await speaker.recv_text() == expected
        for connect in (lambda: RawWS.connect(gw.ws_url + "/chat/websocket"),
                        lambda: SockJSWS.connect(gw.ws_url + "/chat")):
            newcomer = await connect()
            replay = [await newcomer.recv_text() for _ in range(15)]
            assert replay == sent[-15:]
            with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                await newcomer.recv_text(timeout=0.3)
            await api("broadcast", endpoint="/chat", data="live")
            assert await newcomer.recv_text() == "live"
            assert await speaker.recv_text() == "live"
            sent.append("live")
            await newcomer.close()
        await speaker.close()


@run()
async def test_idle_channels_leave_no_state(gw):
    """Publishing to channels nobody listens to and that keep no history (an
    application notifying offline users), or asking for the history of names nobody
    uses, must not grow the broker; a channel with history keeps its state."""
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        before = (await api.stats())["broker"]["channels"]
        status, body = await api.post("commands", [
            {"op": "publish", "channel": f"nohist:user{i}", "data": i} for i in range(500)])
        assert status == 200 and all("result" in r for r in body["results"])
        status, body = await api.post("commands", [
            {"op": "history", "channel": f"unknown{i}"} for i in range(300)])
        assert status == 200
        assert body["results"][0]["result"]["publications"] == []
        c = await ChannelsClient.connect(gw, "/ch")
        for i in range(50):
            await c.ok("subscribe", channel=f"nohist:visit{i}")
            await c.ok("unsubscribe", channel=f"nohist:visit{i}")
        await c.close()
        await eventually(lambda: _no_clients(api))
        assert (await api.stats())["broker"]["channels"] == before
        await api("publish", channel="kept", data=1)
        assert (await api.stats())["broker"]["channels"] == before + 1


@pytest.mark.parametrize("sockjs", [pytest.param(False, id="raw"), pytest.param(True, id="sockjs")])
@run(timeout=90)
async def test_recovery_under_load(gw, sockjs):
    """Publications pour in through ZeroMQ while a client keeps losing its connection and
    coming back with its position: what it ends up with is every publication, once, in
    order."""
    total = 2000
    channel = f"stress:{next(_names)}"
    ctx = zmq.asyncio.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(gw.pull)

    async def pump() -> None:
        for i in range(total):
            await push.send(json.dumps({"op": "publish", "channel": channel, "data": i}).encode())
            if i % 20 == 19:
                await asyncio.sleep(0.01)  # about 2,000 a second

    got: list[int] = []
    reconnects = 0
    try:
        c = await ChannelsClient.connect(gw, "/ch", sockjs=sockjs)
        result = await c.ok("subscribe", channel=channel)
        position = {"offset": result["offset"], "epoch": result["epoch"]}
        pumping = asyncio.ensure_future(pump())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(got) < total:
            assert loop.time() < deadline, f"stuck at {len(got)} after {reconnects} reconnects"
            # Read for a moment, then lose the connection.
            stop = loop.time() + 0.05 + 0.1 * (reconnects % 3)
            while loop.time() < stop and len(got) < total:
                try:
                    message = await c.next("message", timeout=max(0.01, stop - loop.time()))
                except TimeoutError:
                    break
                got.append(message["data"])
                position = {"offset": message["offset"], "epoch": message["epoch"]}
            if len(got) >= total:
                break
            await c.drop()
            reconnects += 1
            c = await ChannelsClient.connect(gw, "/ch", sockjs=sockjs)
            result = await c.ok("subscribe", channel=channel, since=position)
            assert result["recovered"] is True, (reconnects, position, result["offset"])
            for p in result["publications"]:
                got.append(p["data"])
                position = {"offset": p["offset"], "epoch": result["epoch"]}
        await pumping
        assert got == list(range(total)), [
            (i, v) for i, v in enumerate(got) if v != i][:5]
        assert reconnects >= 5
        # Nothing twice: a marker pushed after the last one is the next message.
        await push.send(json.dumps({"op": "publish", "channel": channel, "data": "marker"}).encode())
        assert (await c.next("message"))["data"] == "marker"
        await c.close()
    finally:
        push.close(linger=0)
        ctx.term()


@run(timeout=60)
async def test_channels_over_xhr_polling(gw):
    """The channels protocol over SockJS xhr-polling (plain HTTP requests): commands,
    publications, a close by the application, and recovery in a new session."""
    channel = f"xhr{next(_names)}"
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        c = ChannelsClient(await XhrSession(http, gw.url + "/chx").open())
        c.welcome = await c.next("connected")
        assert await c.ok("ping") == {"pong": True}
        sub = await c.ok("subscribe", channel=channel)
        await c.ok("publish", channel=channel, data="from xhr")
        await api("publish", channel=channel, data="from the app")
        got = await c.messages(2)
        assert [m["data"] for m in got] == ["from xhr", "from the app"]
        assert got[-1]["offset"] == sub["offset"] + 2
        await api("close", conn=c.conn, code=4000, reason="later")
        closed = await c.closed()
        assert (closed.code, closed.reason) == (4000, "later")
        for i in range(3):
            await api("publish", channel=channel, data=i)
        c = ChannelsClient(await XhrSession(http, gw.url + "/chx").open())
        await c.next("connected")
        result = await c.ok("subscribe", channel=channel,
                            since={"offset": got[-1]["offset"], "epoch": got[-1]["epoch"]})
        assert result["recovered"] is True and [p["data"] for p in result["publications"]] == [0, 1, 2]
