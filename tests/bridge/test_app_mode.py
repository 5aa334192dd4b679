"""The ``app`` mode end to end: client events (open, message, close) reach a ZeroMQ
PULL worker in order, with increasing ``seq`` and unique ids, from raw WebSocket,
SockJS over WebSocket and SockJS xhr-polling clients; the application drives clients
with commands over HTTP and over ZeroMQ (PULL; SUB and PULL for data, every wire format); ``app_accept``
holds a connection until the application accepts it; and no event of a connection
follows its ``close``, however fast clients come and go."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal

import aiohttp
import pytest
import websockets
import zmq
import zmq.asyncio

from realtime import (
    KEY,
    Api,
    Closed,
    RawWS,
    SockJSWS,
    XhrSession,
    ZmqWorker,
    eventually,
    health,
    run,
    until_closed,
    zmq_address,
)
from support import config_gateway

ACCEPT_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def gw():
    addresses = {name: zmq_address() for name in ("push", "sub", "pull")}
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[zeromq]
push = "{addresses['push']}"
sub = "{addresses['sub']}"
pull = "{addresses['pull']}"
default = "channel:zdefault"

[[endpoint]]
prefix = "/app"
mode = "app"
disconnect_delay = 1
heartbeat_delay = 2

[[endpoint]]
prefix = "/held"
mode = "app"
app_accept = true
auth_timeout = {ACCEPT_TIMEOUT}

[[endpoint]]
prefix = "/members"
mode = "app"
anonymous = false

[[namespace]]
name = ""
history_size = 50
presence = true

[[namespace]]
name = "nopres"
"""
    with config_gateway(config) as proc:
        proc.zmq = addresses
        yield proc


@pytest.fixture(scope="module")
def worker(gw):
    """One worker for the module: a PULL socket that disconnects loses what the PUSH
    side had already queued for it (ZeroMQ drops a closed pipe's messages)."""
    w = ZmqWorker(gw.zmq["push"])
    yield w
    w.close()


def tag() -> str:
    return os.urandom(5).hex()


async def open_event(worker: ZmqWorker, marker: str, timeout: float = 5.0) -> dict:
    """The open event of the connection whose URL query carries ``tag=<marker>``."""
    return await worker.event(timeout, lambda e: e["type"] == "open"
                              and f"tag={marker}" in e.get("request", {}).get("query", ""))


async def marker_is_next(gw, worker: ZmqWorker, unwanted) -> None:
    """Nothing matching ``unwanted`` has been emitted so far: the open event of a marker
    connection opened now (events leave through one queue, in order) is the next event
    that matches either."""
    marker = tag()
    ws = await RawWS.connect(gw.ws_url + f"/app/websocket?tag={marker}")
    try:
        event = await worker.event(match=lambda e: unwanted(e) or (
            e["type"] == "open" and e.get("request", {}).get("query") == f"tag={marker}"))
        assert not unwanted(event), f"unexpected event: {event}"
    finally:
        await ws.close()


def check_sequence(events: list[dict]) -> None:
    """One connection's events: open first, close last, seq 1..n, ids unique."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    assert events[0]["type"] == "open" and events[-1]["type"] == "close", events
    assert all(e["type"] == "message" for e in events[1:-1]), events
    assert len({e["id"] for e in events}) == len(events)
    assert len({e["conn"] for e in events}) == 1


# -- events ---------------------------------------------------------------------------------


@run()
async def test_events_raw_websocket(gw, worker):
    marker = tag()
    ws = await RawWS.connect(gw.ws_url + f"/app/websocket?tag={marker}",
                             additional_headers={"X-Custom": "yes", "Cookie": "secret=1"})
    opened = await open_event(worker, marker)
    assert opened["endpoint"] == "/app" and opened["seq"] == 1 and opened["transport"] == "websocket"
    assert opened["remote"] == "127.0.0.1" and opened["user"] is None and opened["pending"] is False
    request = opened["request"]
    assert request["path"] == "/app/websocket" and request["query"] == f"tag={marker}"
    assert request["headers"]["X-Custom"] == "yes"
    assert "Cookie" not in request["headers"]  # never forwarded
    await ws.send_text("hello")
    await ws.send_text('{"a":1}')
    await ws.send_text(b"\x00\xffbin")
    await ws.close()
    rest = await worker.events_of(opened["conn"], 4)
    events = [opened, *rest]
    check_sequence(events)
    binary = base64.b64encode(b"\x00\xffbin").decode()
    assert [e.get("data") for e in rest[:3]] == ["hello", '{"a":1}', binary]
    assert rest[2]["binary"] is True
    assert rest[3]["code"] == 1000
    assert events[-1]["time"] >= events[0]["time"]


@run()
async def test_events_sockjs_websocket(gw, worker):
    marker = tag()
    ws = await SockJSWS.connect(gw.ws_url + "/app", query=f"tag={marker}")
    opened = await open_event(worker, marker)
    assert opened["transport"] == "sockjs-websocket"
    await ws.send_many(["one", "two", "three"])
    await ws.send_text("four")
    await ws.close()
    rest = await worker.events_of(opened["conn"], 5)
    check_sequence([opened, *rest])
    assert [e["data"] for e in rest[:4]] == ["one", "two", "three", "four"]


@run()
async def test_events_and_commands_xhr_polling(gw, worker):
    marker = tag()
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        session = await XhrSession(http, gw.url + "/app").open(f"tag={marker}")
        opened = await open_event(worker, marker)
        assert opened["transport"] == "xhr-polling"
        conn = opened["conn"]
        assert await session.send_many(["x1", "x2"]) == 204
        assert [e["data"] for e in await worker.events_of(conn, 2)] == ["x1", "x2"]
        await api("send", conn=conn, data="to you")
        await api("send", conn=conn, data={"k": [1, 2]})
        assert await session.recv_text() == "to you"
        assert await session.recv_text() == '{"k":[1,2]}'
        await api("close", conn=conn, code=4100, reason="done")
        with pytest.raises(Closed) as closed:
            await session.recv_text()
        assert (closed.value.code, closed.value.reason) == (4100, "done")
        # Sending to a closed session: 404, and no event.
        assert await session.send_many(["late"]) == 404
        close = await worker.event(match=lambda e: e.get("conn") == conn)
        assert close["type"] == "close" and close["code"] == 4100 and close["seq"] == 4
        await marker_is_next(gw, worker, lambda e: e.get("conn") == conn)
        # A session nobody polls any more times out, and its close is sent.
        marker = tag()
        session = await XhrSession(http, gw.url + "/app").open(f"tag={marker}")
        opened = await open_event(worker, marker)
        assert await session.send_many(["bye"]) == 204
        message, close = await worker.events_of(opened["conn"], 2, timeout=6)
        assert message["data"] == "bye" and close["type"] == "close" and close["seq"] == 3


# -- commands over HTTP ----------------------------------------------------------------------


@run()
async def test_http_commands(gw, worker):
    marker = tag()
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        ws = await RawWS.connect(gw.ws_url + f"/app/websocket?tag={marker}")
        conn = (await open_event(worker, marker))["conn"]
        # send: a string as is, anything else as JSON text.
        assert await api("send", conn=conn, data="plain") == {"conn": conn}
        await api("send", conn=conn, data=[1, {"b": None}])
        assert await ws.recv_text() == "plain"
        assert await ws.recv_text() == '[1,{"b":null}]'
        # subscribe + publish: the bare data.
        sub = await api("subscribe", conn=conn, channel="news")
        assert sub["channel"] == "news" and sub["recovered"] is True and "offset" in sub and "epoch" in sub
        pub = await api("publish", channel="news", data={"title": "t"})
        assert pub == {"channel": "news", "offset": sub["offset"] + 1, "epoch": sub["epoch"]}
        assert await ws.recv_text() == '{"title":"t"}'
        # Subscribing again changes nothing and tells the channel's position.
        again = await api("subscribe", conn=conn, channel="news")
        assert again == {"channel": "news", "offset": pub["offset"], "epoch": pub["epoch"], "recovered": True}
        # presence and history
        presence = await api("presence", channel="news")
        assert presence == {"channel": "news", "clients": {conn: {"conn": conn, "user": None}}}
        history = await api("history", channel="news", limit=5)
        assert [p["data"] for p in history["publications"]] == [{"title": "t"}]
        assert history["publications"][0]["channel"] == "news"
        # subscribe with since: the missed ones first, then live.
        await api("publish", channel="later", data="m1")
        first = await api("publish", channel="later", data="m2")
        await api("publish", channel="later", data="m3")
        await api("subscribe", conn=conn, channel="later",
                  since={"offset": first["offset"] - 1, "epoch": first["epoch"]})
        await api("publish", channel="later", data="m4")
        assert [await ws.recv_text() for _ in range(3)] == ["m2", "m3", "m4"]
        # unsubscribe
        assert await api("unsubscribe", conn=conn, channel="news") == {"unsubscribed": True}
        assert await api("unsubscribe", conn=conn, channel="news") == {"unsubscribed": False}
        await api("publish", channel="news", data="unseen")
        stats = await api.stats()
        assert stats["endpoints"]["/app"]["connections"] >= 1 and stats["commands"]["executed"] > 0
        # batch: in order, each with its result or error
        status, body = await api.post("commands", [
            {"op": "send", "conn": conn, "data": "batched"},
            {"op": "send", "conn": "nobody", "data": "x"},
            {"op": "publish", "channel": "bad channel", "data": 1},
            {"op": "nope"},
            5,
            {"op": "stats"},
        ])
        assert status == 200
        results = body["results"]
        assert results[0] == {"result": {"conn": conn}}
        assert [r.get("error", {}).get("code") for r in results[1:5]] == [
            "not_found", "bad_channel", "unknown_op", "bad_request"]
        assert "node" in results[5]["result"]
        assert await ws.recv_text() == "batched"
        # close with code and reason
        await api("close", conn=conn, code=4000, reason="bye")
        with pytest.raises(Closed) as closed:
            await ws.recv_text()
        assert (closed.value.code, closed.value.reason) == (4000, "bye")
        close = await worker.event(match=lambda e: e.get("conn") == conn)
        assert (close["type"], close["code"], close["reason"]) == ("close", 4000, "bye")
        status, body = await api.post("send", {"conn": conn, "data": "x"})
        assert status == 404 and body["error"]["code"] == "not_found"


# -- commands over ZeroMQ ----------------------------------------------------------------------


async def _xpub(ctx: zmq.asyncio.Context, address: str) -> zmq.asyncio.Socket:
    """A publisher that waits until the gateway's SUB socket has subscribed, so that
    nothing it sends is dropped (ZeroMQ's slow joiner)."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(address)
    assert await pub.poll(5000), "the gateway's SUB socket never subscribed"
    assert (await pub.recv())[:1] == b"\x01"
    return pub


async def _pub(ctx: zmq.asyncio.Context, address: str, api: Api) -> zmq.asyncio.Socket:
    """A plain PUB socket, as in the talk, that waits for its connection by sending a
    probe until the gateway has seen one."""
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(address)
    probe = f"zprobe{tag()}"

    async def arrived() -> bool:
        await pub.send_multipart([probe.encode(), b"1"])
        return (await api("history", channel=probe, limit=0))["offset"] > 0

    await eventually(arrived, timeout=5, interval=0.02)
    return pub


@pytest.mark.parametrize("kind", ["xpub", "pub", "pull"])
@run()
async def test_zeromq_commands(gw, worker, kind):
    marker = tag()
    ctx = zmq.asyncio.Context()
    try:
        if kind == "xpub":
            sock = await _xpub(ctx, gw.zmq["sub"])
        elif kind == "pub":
            async with aiohttp.ClientSession() as http:
                sock = await _pub(ctx, gw.zmq["sub"], Api(http, gw))
        else:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(gw.zmq["pull"])
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            ws = await RawWS.connect(gw.ws_url + f"/app/websocket?tag={marker}")
            conn = (await open_event(worker, marker))["conn"]
            ch = f"z{kind}"
            await api("subscribe", conn=conn, channel=ch)
            await api("subscribe", conn=conn, channel="zdefault")
            commands = kind == "pull"  # SUB carries data only (bridge.zeromq)
            # One frame, one JSON command.
            await sock.send(json.dumps({"op": "send", "conn": conn, "data": "direct"}).encode())
            if commands:
                assert await ws.recv_text() == "direct"
            else:  # data for [zeromq] default, as it is
                assert await ws.recv_text() == json.dumps({"op": "send", "conn": conn, "data": "direct"})
            # One frame, a JSON array of commands, run in order.
            batch = [{"op": "publish", "channel": ch, "data": i} for i in range(3)]
            await sock.send(json.dumps(batch).encode())
            if commands:
                assert [await ws.recv_text() for _ in range(3)] == ["0", "1", "2"]
            else:
                assert await ws.recv_text() == json.dumps(batch)
            # Two frames: [channel, data], data JSON when it parses, else the text.
            await sock.send_multipart([ch.encode(), b'{"t": 1}'])
            await sock.send_multipart([ch.encode(), b"not json"])
            assert await ws.recv_text() == '{"t":1}'
            assert await ws.recv_text() == "not json"
            # Anything else goes to [zeromq] default, byte for byte.
            await sock.send(b"hello from a shell script")
            await sock.send(b'{"no_op": true}')
            await sock.send(b"42")
            assert [await ws.recv_text() for _ in range(3)] == [
                "hello from a shell script", '{"no_op": true}', "42"]
            # Broken commands are refused and logged; the next one still works.
            if commands:
                await sock.send(json.dumps({"op": "send", "conn": "nobody", "data": 1}).encode())
                await sock.send(json.dumps({"op": "publish", "channel": "bad channel!", "data": 1}).encode())
            await sock.send_multipart([b"a", b"b", b"c"])
            await sock.send_multipart([b"bad channel!", b"x"])
            await sock.send_multipart([b"\xff\xfe", b"x"])
            # Not UTF-8: binary data, a binary frame of these bytes.
            await sock.send(b"\xff\xfe invalid utf-8")
            assert await ws.recv_text() == b"\xff\xfe invalid utf-8"
            if commands:
                await sock.send(json.dumps({"op": "close", "conn": conn, "code": 4321, "reason": "zmq"}).encode())
                with pytest.raises(Closed) as closed:
                    extra = await ws.recv_text()
                    raise AssertionError(f"received {extra!r}")
                assert (closed.value.code, closed.value.reason) == (4321, "zmq")
            else:
                await sock.send_multipart([ch.encode(), b'"last"'])
                assert await ws.recv_text() == "last"
            assert (await health(http, gw))["status"] == "ok"
    finally:
        ctx.destroy(linger=0)


# -- app_accept -----------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["api", "commands"])
@run()
async def test_app_accept(gw, worker, via):
    marker = tag()
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        ws = await RawWS.connect(gw.ws_url + f"/held/websocket?tag={marker}")
        opened = await open_event(worker, marker)
        conn = opened["conn"]
        assert opened["pending"] is True
        await ws.send_text("early 1")
        await ws.send_text("early 2")
        await (await ws.ws.ping())  # the pong: the gateway has read both messages
        await marker_is_next(gw, worker, lambda e: e.get("conn") == conn)  # held: no event yet
        if via == "api":
            assert await api("accept", conn=conn, user="zoe", info={"plan": "pro"}) == {"conn": conn}
        else:
            status, body = await api.post("commands", [{"op": "accept", "conn": conn, "user": "zoe"}])
            assert status == 200 and body["results"] == [{"result": {"conn": conn}}]
        await ws.send_text("after")
        events = await worker.events_of(conn, 3)
        assert [(e["data"], e["user"]) for e in events] == [
            ("early 1", "zoe"), ("early 2", "zoe"), ("after", "zoe")]
        # Accepted: not closed at the deadline.
        await asyncio.sleep(ACCEPT_TIMEOUT + 0.3)
        await api("send", conn=conn, data="still here")
        assert await ws.recv_text() == "still here"
        await ws.close()
        close = await worker.event(match=lambda e: e.get("conn") == conn)
        check_sequence([opened, *events, close])


@pytest.mark.parametrize("sockjs", [False, True])
@run()
async def test_app_accept_deadline(gw, worker, sockjs):
    marker = tag()
    loop = asyncio.get_running_loop()
    started = loop.time()
    if sockjs:
        ws = await SockJSWS.connect(gw.ws_url + "/held", query=f"tag={marker}")
    else:
        ws = await RawWS.connect(gw.ws_url + f"/held/websocket?tag={marker}")
    opened = await open_event(worker, marker)
    await ws.send_text("ignored")
    with pytest.raises(Closed) as closed:
        await ws.recv_text(timeout=ACCEPT_TIMEOUT + 3)
    assert closed.value.code == 4001
    assert ACCEPT_TIMEOUT - 0.1 <= loop.time() - started <= ACCEPT_TIMEOUT + 2.5
    close = await worker.event(match=lambda e: e.get("conn") == opened["conn"])
    assert close["type"] == "close" and close["code"] == 4001 and close["seq"] == 2
    async with aiohttp.ClientSession() as http:
        status, _body = await Api(http, gw).post("accept", {"conn": opened["conn"]})
        assert status == 404


# -- nothing after close ------------------------------------------------------------------------


@run(timeout=90)
async def test_no_event_after_close_under_churn(gw, worker):
    """Clients that are closed by the application while they are sending, reconnect at
    once and send again; SockJS sessions too. Every connection's events are open,
    messages, close, with nothing after the close and no close missing."""
    markers: list[str] = []
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)

        async def raw_round(i: int) -> None:
            marker = tag()
            markers.append(marker)
            ws = await RawWS.connect(gw.ws_url + f"/app/websocket?tag={marker}")
            for n in range(3):
                await ws.send_text(f"{i}-{n}")
            return ws

        async def flood(ws) -> None:
            """Send until done, or until the close comes (4000 "churn", below)."""
            try:
                for n in range(200):
                    await ws.send_text(f"flood {n}")
                    if n % 20 == 0:
                        await asyncio.sleep(0)
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and (exc.rcvd.code, exc.rcvd.reason) == (4000, "churn"), exc

        opened: dict[str, dict] = {}
        for i in range(12):
            ws = await raw_round(i)
            event = await open_event(worker, markers[-1])
            opened[event["conn"]] = event
            flooding = asyncio.ensure_future(flood(ws))
            await asyncio.sleep(0.005 * (i % 4))
            await api.post("close", {"conn": event["conn"], "code": 4000, "reason": "churn"})
            await flooding
            if i % 3 == 0:
                await ws.drop()
            else:
                closed = await until_closed(ws)
                assert (closed.code, closed.reason) == (4000, "churn")
        # SockJS over WebSocket and xhr: closed by the application, then a send.
        for _ in range(4):
            marker = tag()
            markers.append(marker)
            s = await SockJSWS.connect(gw.ws_url + "/app", query=f"tag={marker}")
            await s.send_many(["a", "b"])
            event = await open_event(worker, marker)
            opened[event["conn"]] = event
            await api.post("close", {"conn": event["conn"]})
            closed = await until_closed(s)
            assert (closed.code, closed.reason) == (3000, "")  # the close command's defaults
            with pytest.raises(websockets.ConnectionClosed):
                for _ in range(100):
                    await s.send_text("after close")
                    await asyncio.sleep(0.02)
            x = await XhrSession(http, gw.url + "/app").open(f"tag={marker}x")
            event = await open_event(worker, marker + "x")
            opened[event["conn"]] = event
            sends = asyncio.ensure_future(asyncio.gather(*[x.send_many([f"x{n}"]) for n in range(10)]))
            await api.post("close", {"conn": event["conn"]})
            await sends
        # Every event of these connections (those seen while looking for the opens
        # included), until each has its close.
        per_conn: dict[str, list[dict]] = {c: [] for c in opened}
        closed: set[str] = set()

        def record(event: dict) -> None:
            assert event["conn"] not in closed, f"event after close: {event}"
            per_conn[event["conn"]].append(event)
            if event["type"] == "close":
                closed.add(event["conn"])

        for event in worker.seen:
            if event.get("conn") in per_conn:
                record(event)
        deadline = asyncio.get_running_loop().time() + 15
        while closed != set(per_conn):
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                record(await worker.event(remaining, lambda e: e.get("conn") in per_conn))
            except TimeoutError:
                missing = {c: per_conn[c] for c in set(per_conn) - closed}
                raise AssertionError(f"close events missing: {missing}") from None
        await marker_is_next(gw, worker, lambda e: e.get("conn") in per_conn)
        for events in per_conn.values():
            check_sequence(events)
        assert (await health(http, gw))["status"] == "ok"


@run()
async def test_reconnect_at_once(gw, worker):
    """A client that closes and reconnects at once, sending right away: both
    connections' events are complete and in order."""
    for _ in range(5):
        first_marker, second_marker = tag(), tag()
        a = await RawWS.connect(gw.ws_url + f"/app/websocket?tag={first_marker}")
        await a.send_text("first")
        # Cut once the gateway has the message: a reset may discard data still in flight.
        first = [await open_event(worker, first_marker)]
        first.append(await worker.event(match=lambda e, c=first[0]["conn"]: e.get("conn") == c))
        await a.drop()
        b = await RawWS.connect(gw.ws_url + f"/app/websocket?tag={second_marker}")
        await b.send_text("second")
        await b.close()
        first.append(await worker.event(match=lambda e, c=first[0]["conn"]: e.get("conn") == c))
        check_sequence(first)
        assert [e["data"] for e in first[1:-1]] == ["first"]
        (second,) = (await _events_until_closed(worker, (f"tag={second_marker}",))).values()
        check_sequence(second)
        assert [e["data"] for e in second[1:-1]] == ["second"]


async def _events_until_closed(worker: ZmqWorker, queries: tuple[str, ...]) -> dict[str, list[dict]]:
    per_conn: dict[str, list[dict]] = {}

    def mine(event: dict) -> bool:
        if event.get("conn") in per_conn:
            return True
        return event["type"] == "open" and event["request"]["query"] in queries

    closes = 0
    while closes < len(queries):
        event = await worker.event(match=mine)
        per_conn.setdefault(event["conn"], []).append(event)
        closes += event["type"] == "close"
    return per_conn


# -- refused connections and closing ones ---------------------------------------------------------


@run()
async def test_refused_connections_send_no_events(gw, worker):
    """A connection refused before the application was told of it (a bad token; no
    token where one is required) must not produce a close event either."""
    # This gateway accepts no token at all, so any token is refused: the connection
    # opens and is closed with 4001, and no token where one is required is the same.
    s = await SockJSWS.connect(gw.ws_url + "/app", query="token=bogus")
    with pytest.raises(Closed) as closed:
        await s.recv_text()
    assert closed.value.code == 4001
    ws = await RawWS.connect(gw.ws_url + "/members/websocket")
    with pytest.raises(Closed) as closed:
        await ws.recv_text()
    assert closed.value.code == 4001
    # A connection that is let in, as a marker: nothing of the refused ones before it.
    marker = tag()
    ok = await RawWS.connect(gw.ws_url + f"/app/websocket?tag={marker}")
    opened = await open_event(worker, marker)
    await ok.close()
    await worker.event(match=lambda e: e.get("conn") == opened["conn"] and e["type"] == "close")
    strays = [e for e in worker.seen if e["type"] == "close" and e["seq"] == 1]
    assert strays == [], strays


@run()
async def test_nothing_after_close(gw, worker):
    """Once the application has closed a connection, what the client still sends (after
    the close frame, before its own) is not delivered."""
    marker = tag()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /app/websocket?tag={marker} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")

    def text(payload: bytes) -> bytes:
        return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload

    writer.write(text(b"before"))
    opened = await open_event(worker, marker)
    before = await worker.event(match=lambda e: e.get("conn") == opened["conn"])
    assert before["data"] == "before"
    async with aiohttp.ClientSession() as http:
        await Api(http, gw)("close", conn=opened["conn"], code=4000, reason="go")
    frame = await asyncio.wait_for(reader.readexactly(6), 5)
    assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 4000
    for i in range(5):
        writer.write(text(f"after {i}".encode()))
    writer.write(bytes((0x88, 0x82)) + b"\0\0\0\0" + (4000).to_bytes(2, "big"))
    await writer.drain()
    close = await worker.event(match=lambda e: e.get("conn") == opened["conn"])
    assert (close["type"], close["code"], close["seq"]) == ("close", 4000, 3), close
    writer.close()


@run(timeout=60)
async def test_close_events_on_shutdown():
    """SIGTERM: every client is closed with 1001 and the application receives every
    close event before the gateway exits."""
    push = zmq_address()
    config = f"""
[server]
shutdown_timeout = 3

[zeromq]
push = "{push}"

[[endpoint]]
prefix = "/app"
mode = "app"
"""
    with config_gateway(config) as gw:
        worker = ZmqWorker(push)
        try:
            clients = [await RawWS.connect(gw.ws_url + "/app/websocket") for _ in range(5)]
            clients += [await SockJSWS.connect(gw.ws_url + "/app") for _ in range(3)]
            opened = {(await worker.event())["conn"] for _ in range(8)}
            gw.proc.send_signal(signal.SIGTERM)
            closes = {}
            while len(closes) < 8:
                event = await worker.event(timeout=6)
                assert event["type"] == "close", event
                closes[event["conn"]] = event["code"]
            assert set(closes) == opened and set(closes.values()) == {1001}
            for client in clients:
                with pytest.raises(Closed) as closed:
                    await client.recv_text()
                assert closed.value.code == 1001
            assert gw.proc.wait(10) == 0
        finally:
            worker.close()
