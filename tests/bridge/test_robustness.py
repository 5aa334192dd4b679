"""Malformed input from the application side never crashes the gateway: HTTP API bodies
and ZeroMQ messages of every wrong shape get clear errors (HTTP: a 4xx with a JSON
error; ZeroMQ: logged and counted), checked by hand and fuzzed with hypothesis, while a
bystander client keeps receiving publications. Events stay valid UTF-8 JSON whatever a
client sends. A client over its rate limit is closed with 4029; a polite one is not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request

import aiohttp
import pytest
import websockets
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime import (
    KEY,
    Api,
    ChannelsClient,
    RawWS,
    SockJSWS,
    ZmqWorker,
    health,
    run,
    until_closed,
    zmq_address,
)
from support import assert_clean_log, config_gateway, log_mark

OPS = ["publish", "broadcast", "send", "subscribe", "unsubscribe", "close", "presence", "history",
       "accept", "reply", "stats"]


@pytest.fixture(scope="module")
def gw():
    addresses = {name: zmq_address() for name in ("push", "pull")}
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[zeromq]
push = "{addresses['push']}"
pull = "{addresses['pull']}"
default = "channel:zdefault"

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[endpoint]]
prefix = "/app"
mode = "app"
app_accept = true

[[endpoint]]
prefix = "/bc"
mode = "broadcast"
history = 5

[[namespace]]
name = ""
publish = "open"
history_size = 20
presence = true
"""
    with config_gateway(config) as proc:
        proc.zmq = addresses
        yield proc


# -- helpers (blocking, for hypothesis) ----------------------------------------------------------


def post(gw, path: str, body: bytes, key: str | None = KEY) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(gw.url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_response(status: int, raw: bytes) -> dict:
    """Never a 5xx; always valid UTF-8 JSON with a result or an error."""
    assert status < 500, (status, raw[:500])
    body = json.loads(raw.decode("utf-8"))  # strict: the body must be UTF-8
    if status == 200:
        assert "result" in body or "results" in body, body
        for item in body.get("results", []):
            assert ("result" in item) != ("error" in item), item
            if "error" in item:
                assert set(item["error"]) == {"code", "message"}
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body


def gateway_alive(gw) -> None:
    assert gw.proc.poll() is None, gw.output()[-3000:]
    with urllib.request.urlopen(gw.url + "/sockway/health", timeout=5) as r:
        assert json.load(r)["status"] == "ok"


# -- the HTTP API --------------------------------------------------------------------------------


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BARRAGE = [
    ("/api/publish", b'{"channel":"x","data":' + _deep(1000) + b"}"),
    ("/api/publish", b'{"channel":"x","data":' + _deep(200) + b"}"),
    ("/api/publish", b'{"channel":"x","data":' + _deep(100000) + b"}"),
    ("/api/send", b'{"conn":"x","data":' + _deep(5000) + b"}"),
    ("/api/commands", _deep(3000)),
    ("/api/commands", b"[" + b'{"op":"publish","channel":"x","data":' + _deep(990) + b"}]"),
    ("/api/publish", b'{"channel":"x","data":"lone \\ud800 surrogate"}'),
    ("/api/publish", b'{"channel":"\\ud800","data":1}'),
    ("/api/send", b'{"conn":"\\udfff","data":"\\ud800"}'),
    ("/api/close", b'{"conn":"x","reason":"\\ud800"}'),
    ("/api/reply", b'{"event":"\\ud800","allow":true,"reason":"\\ud800"}'),
    ("/api/accept", b'{"conn":"x","user":"\\ud800","info":{"a":"\\ud800"}}'),
    ("/api/publish", b'{"channel":"x","data":1e999}'),
    ("/api/publish", b'{"channel":"x","data":NaN}'),
    ("/api/publish", b'{"channel":"x","data":123456789012345678901234567890}'),
    ("/api/publish", b'{"channel":"x","data":"' + b"9" * 5000 + b'"}'),
    ("/api/publish", b'{"channel":"x","data":' + b"9" * 5000 + b"}"),
    ("/api/history", b'{"channel":"x","limit":123456789012345678901234567890}'),
    ("/api/history", b'{"channel":"x","since":{"offset":-99999999999999999999999,"epoch":""}}'),
    ("/api/subscribe", b'{"conn":"x","channel":"x","since":{"offset":1,"epoch":"e"}}'),
    ("/api/publish", b'{"channel":"x","data":1,"channel":"y"}'),
    ("/api/publish", b"\xef\xbb\xbf{}"),
    ("/api/publish", b'{"channel":"x","data":"\x00"}'),
    ("/api/commands", b"[" + b",".join([b'{"op":"stats"}'] * 1000) + b"]"),
    ("/api/commands", b'[null, [], "x", 1, {"op": null}, {"op": ["publish"]}, {"op": {}}]'),
]


@run(timeout=60)
async def test_api_barrage(gw):
    mark = log_mark(gw)
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        bystander = await ChannelsClient.connect(gw, "/ch")
        await bystander.ok("subscribe", channel="watch")
        loop = asyncio.get_running_loop()
        for n, (path, body) in enumerate(BARRAGE):
            status, raw = await loop.run_in_executor(None, post, gw, path, body)
            check_response(status, raw)
            await api("publish", channel="watch", data=n)
            assert (await bystander.next("message"))["data"] == n, (path, body[:100])
        # A lone surrogate published is delivered (the SockJS client receives the
        # escape, the raw WebSocket one U+FFFD) and served back as valid JSON.
        status, raw = await loop.run_in_executor(None, post, gw, "/api/history", b'{"channel":"x"}')
        check_response(status, raw)
        assert (await health(http, gw))["status"] == "ok"
    assert_clean_log(gw, mark)


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(_scalars, lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=15)
_channel = st.sampled_from(["news", "a:b", "zdefault", "", "bad channel", "x" * 300]) | st.text(max_size=12) | _json
_conn = st.sampled_from(["", "nobody", "000.1"]) | st.text(max_size=12) | _json
_command = st.fixed_dictionaries(
    {"op": st.sampled_from([*OPS, "bogus"]) | _json},
    optional={"channel": _channel, "conn": _conn, "data": _json, "code": st.integers() | _json,
              "reason": st.text(max_size=130) | _json, "limit": st.integers() | _json,
              "since": st.fixed_dictionaries({"offset": st.integers(), "epoch": st.text(max_size=8)}) | _json,
              "event": st.text(max_size=12) | _json, "allow": _json, "user": _json, "info": _json,
              "endpoint": st.sampled_from(["/bc", "/ch", "/nope"]) | _json},
)


def test_api_fuzz(gw):
    """Generated commands, batches and raw bodies on every route of the HTTP API: each
    gets a clear answer, and then this gateway (the one fuzzed) is alive with a clean log."""
    mark = log_mark(gw)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(_command | _json, max_size=6), single=_command, raw=st.binary(max_size=200))
    def fuzz(batch, single, raw):
        check_response(*post(gw, "/api/commands", json.dumps(batch).encode()))
        op = single.get("op")
        route = op if isinstance(op, str) and op in OPS and op != "stats" else "publish"
        check_response(*post(gw, f"/api/{route}", json.dumps(single).encode()))
        status, body = post(gw, f"/api/{route}", raw)
        check_response(status, body)
        gateway_alive(gw)

    fuzz()
    gateway_alive(gw)
    assert_clean_log(gw, mark)


# -- ZeroMQ --------------------------------------------------------------------------------------


def _push(gw) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(gw.zmq["pull"])
    return ctx, sock


ZMQ_BARRAGE = [
    [b""], [b"", b""], [b"a", b"b", b"c"], [b"\xff\xfe"], [b"\xff", b"\xfe"], [b"[]"], [b"[1,2]"],
    [b'{"op": "bogus"}'], [b'{"op": null}'], [b'[{"op": "bogus"}, 5]'], [b'[{"op": "publish"}]'],
    [b'{"op":"publish","channel":"bad channel","data":1}'], [b"bad channel!", b"x"],
    [b'{"op":"publish","channel":"x","data":' + _deep(990) + b"}"],
    [b"x", _deep(990)], [b'{"op":"send","conn":"x","data":"\\ud800"}'],
    [b'{"op":"close","conn":"x","reason":"\\ud800"}'], [b"x" * (2 << 20)], [b"\x00" * 10] * 5,
]


@run(timeout=60)
async def test_zeromq_barrage(gw):
    mark = log_mark(gw)
    ctx, sock = _push(gw)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            bystander = await ChannelsClient.connect(gw, "/ch")
            await bystander.ok("subscribe", channel="zwatch")
            await bystander.ok("subscribe", channel="zdefault")
            for n, frames in enumerate(ZMQ_BARRAGE):
                sock.send_multipart(frames)
                sock.send(json.dumps({"op": "publish", "channel": "zwatch", "data": n}).encode())
                while True:
                    message = await bystander.next("message")
                    if message["channel"] == "zwatch":
                        break
                assert message["data"] == n, frames[:1]
            assert (await health(http, gw))["status"] == "ok"
            stats = await api.stats()
            assert stats["endpoints"]["/ch"]["connections"] >= 1
    finally:
        ctx.destroy(linger=0)
    assert_clean_log(gw, mark)


def test_zeromq_fuzz(gw):
    """Generated multipart messages on the PULL socket: afterwards this gateway (the
    one fuzzed) is alive, answers, and logged no traceback or error."""
    mark = log_mark(gw)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(frames=st.lists(st.binary(max_size=100) | _command.map(lambda c: json.dumps(c).encode()),
                           min_size=1, max_size=3))
    def fuzz(frames):
        ctx, sock = _push(gw)
        try:
            sock.send_multipart(frames)
        finally:
            sock.close(linger=2000)
            ctx.term()
        gateway_alive(gw)

    fuzz()
    # The last messages are handled: a publication sent after them arrives.
    asyncio.run(_published_after(gw, "zfuzzdone"))
    gateway_alive(gw)
    assert_clean_log(gw, mark)


async def _published_after(gw, channel: str) -> None:
    """A publication sent over the same PULL socket path arrives at a subscriber: what
    was pushed before it has been read by the gateway."""
    ctx, sock = _push(gw)
    try:
        bystander = await ChannelsClient.connect(gw, "/ch")
        await bystander.ok("subscribe", channel=channel)
        sock.send(json.dumps({"op": "publish", "channel": channel, "data": "after"}).encode())
        assert (await bystander.next("message"))["data"] == "after"
        await bystander.close()
    finally:
        ctx.destroy(linger=0)


# -- events stay valid JSON -----------------------------------------------------------------------


@run()
async def test_events_are_valid_utf8(gw):
    """A SockJS client can send a lone surrogate; the event still is UTF-8 JSON."""
    worker = ZmqWorker(gw.zmq["push"])
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            s = await SockJSWS.connect(gw.ws_url + "/app", query="tag=surrogate")
            raw = await asyncio.wait_for(_raw_event(worker, b"tag=surrogate"), 5)
            opened = json.loads(raw.decode("utf-8"))
            await api("accept", conn=opened["conn"], user="\ud800user", info={"k": "\udfff"})
            await s.ws.send('["a\\ud800b"]')
            raw = await asyncio.wait_for(_raw_event(worker, opened["conn"].encode()), 5)
            event = json.loads(raw.decode("utf-8"))  # strict UTF-8
            assert event["data"] == "a\ud800b" and event["user"] == "\ud800user"
            # The application sends it back: the SockJS client gets the same string.
            await api("send", conn=opened["conn"], data=event["data"])
            assert await s.recv_text() == "a\ud800b"
            await s.close()
    finally:
        worker.close()


async def _raw_event(worker: ZmqWorker, needle: bytes) -> bytes:
    while True:
        raw = await worker.sock.recv()
        if needle in raw:
            return raw


# -- rate limit -----------------------------------------------------------------------------------


@run(timeout=60)
async def test_rate_limit():
    config = """
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[[endpoint]]
prefix = "/echo"
mode = "echo"
rate_limit = 10

[[endpoint]]
prefix = "/ch"
mode = "channels"
rate_limit = 10
"""
    with config_gateway(config) as gw:
        for flood_url in (gw.ws_url + "/echo/websocket", None):
            polite = await RawWS.connect(gw.ws_url + "/echo/websocket")
            if flood_url is not None:
                flood = await RawWS.connect(flood_url)
            else:
                flood = await SockJSWS.connect(gw.ws_url + "/echo")
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def be_polite(polite=polite) -> int:
                got = 0
                for i in range(12):  # 5 per second for 2.4 s
                    await polite.send_text(f"p{i}")
                    assert await polite.recv_text() == f"p{i}"
                    got += 1
                    await asyncio.sleep(0.2)
                return got

            politeness = asyncio.ensure_future(be_polite())
            with contextlib.suppress(websockets.ConnectionClosed):
                for i in range(1000):
                    await flood.send_text(f"f{i}")
                    await asyncio.sleep(0.001)
            closed = await until_closed(flood)
            assert closed.code == 4029, closed
            assert loop.time() - started < 5
            assert await politeness == 12
            await polite.close()
        # Channels mode counts commands the same way.
        c = await ChannelsClient.connect(gw, "/ch")
        for _ in range(5):
            await c.ok("ping")
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(200):
                await c.send({"op": "ping", "id": i})
        assert (await c.closed()).code == 4029
        async with aiohttp.ClientSession() as http:
            assert (await health(http, gw))["status"] == "ok"


# -- deeply nested JSON ------------------------------------------------------------------------


DEEP_FRAMES = [[b'{"op":"publish","channel":"x","data":' + _deep(5000) + b"}"], [_deep(100000)],
               [b"x", _deep(100000)]]


@run(timeout=30)
async def test_zeromq_deep_json_refused_cleanly(gw):
    """JSON nested deeper than the parser's limit is refused like any other bad
    message: a warning, no traceback."""
    mark = len(gw.output())
    ctx, sock = _push(gw)
    try:
        async with aiohttp.ClientSession() as http:
            bystander = await ChannelsClient.connect(gw, "/ch")
            await bystander.ok("subscribe", channel="deepwatch")
            for frames in DEEP_FRAMES:
                sock.send_multipart(frames)
            sock.send(json.dumps({"op": "publish", "channel": "deepwatch", "data": "after"}).encode())
            assert (await bystander.next("message"))["data"] == "after"
            assert (await health(http, gw))["status"] == "ok"
    finally:
        ctx.destroy(linger=0)
    assert_clean_log(gw, mark)
