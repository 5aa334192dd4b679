"""Garbage from clients of the channels protocol: malformed JSON, wrong types, unknown
ops, invalid channel names, deep nesting, lone surrogates, binary frames, invalid UTF-8
and frames over the size limit, by hand and fuzzed with hypothesis. Each gets a clear
error (or, for what RFC 6455 says must end a connection, the right close code), and the
gateway keeps serving: the connection answers a ping after each, a bystander keeps
receiving publications, /sockway/health answers, and the log holds no traceback."""

from __future__ import annotations

import json
import urllib.request

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import websocket as wsclient
from realtime import KEY, Api, ChannelsClient, Closed, health, run, zmq_address
from support import assert_clean_log, config_gateway, log_mark

MAX_MESSAGE = 65536


@pytest.fixture(scope="module")
def gw():
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[zeromq]
push = "{zmq_address()}"

[[endpoint]]
prefix = "/ch"
mode = "channels"
max_message_size = {MAX_MESSAGE}

[[namespace]]
name = ""
publish = "open"
history_size = 10
presence = true
join_leave = true
"""
    with config_gateway(config) as proc:
        yield proc


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


GARBAGE = [
    "", " ", "\ufeff{}", "null", "true", "42", '"op"', "[]", '[{"op":"ping","id":1}]', "{}", "{",
    '{"op":"ping","id":1,}', "not json at all", "\x00\x01", '{"op":null}', '{"op":42}', '{"op":["ping"]}',
    '{"op":{"x":1}}', '{"op":"PING"}', '{"op":"__init__"}', '{"op":"_auth"}', '{"op":"on_message"}',
    '{"op":"ping","id":null}', '{"op":"ping","id":[1]}', '{"op":"ping","id":{"a":1}}', '{"op":"ping","id":1.5}',
    '{"op":"ping","id":123456789012345678901234567890}', '{"op":"ping","id":"' + "i" * 10000 + '"}',
    '{"op":"subscribe","id":1}', '{"op":"subscribe","id":1,"channel":5}', '{"op":"subscribe","channel":null}',
    '{"op":"subscribe","id":1,"channel":"a b"}', '{"op":"subscribe","id":1,"channel":"' + "c" * 256 + '"}',
    '{"op":"subscribe","id":1,"channel":"caf\u00e9"}', '{"op":"subscribe","id":1,"channel":"a\\u0000b"}',
    '{"op":"subscribe","id":1,"channel":"\\ud800"}', '{"op":"subscribe","id":1,"channel":"x","since":5}',
    '{"op":"subscribe","id":1,"channel":"x","since":{"offset":"1","epoch":"e"}}',
    '{"op":"subscribe","id":1,"channel":"x","since":{"offset":1e400,"epoch":"e"}}',
    '{"op":"subscribe","id":1,"channel":"x","since":{"offset":-5,"epoch":""}}',
    '{"op":"unsubscribe","id":1,"channel":[]}', '{"op":"publish","id":1,"channel":"x"}',
    '{"op":"publish","id":1,"channel":"x","data":' + _deep(200) + "}",
    '{"op":"publish","id":1,"channel":"x","data":' + _deep(1000) + "}",
    '{"op":"publish","id":1,"channel":"x","data":' + _deep(20000) + "}",
    _deep(30000),
    '{"op":"publish","id":1,"channel":"x","data":"\\ud800\\udfff\\udc00"}',
    '{"op":"publish","id":1,"channel":"x","data":NaN}',
    '{"op":"publish","id":1,"channel":"x","data":123456789012345678901234567890}',
    '{"op":"publish","id":1,"channel":"x","data":"' + "d" * 60000 + '"}',
    '{"op":"presence","id":1,"channel":"nowhere"}', '{"op":"history","id":1,"channel":"x","limit":-1}',
    '{"op":"history","id":1,"channel":"x","limit":1e999}', '{"op":"message","id":1}',
    '{"op":"message","id":1,"data":' + _deep(1000) + "}", '{"op":"message","id":1,"data":"\\ud800"}',
    '{"op":"ping","id":"end-of-garbage"}',
]


async def _barrage(gw, sockjs: bool) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        bystander = await ChannelsClient.connect(gw, "/ch", sockjs=not sockjs)
        await bystander.ok("subscribe", channel="watch")
        c = await ChannelsClient.connect(gw, "/ch", sockjs=sockjs)
        await c.ok("subscribe", channel="x")
        for n, text in enumerate(GARBAGE):
            await c.send(text)
            assert await c.ok("ping") == {"pong": True}, text[:200]
            for frame in c.inbox:
                assert frame["type"] in ("reply", "error", "message"), frame
                if frame["type"] in ("reply", "error") and "error" in frame:
                    assert set(frame["error"]) == {"code", "message"} and frame["error"]["message"]
            c.inbox.clear()
            await api("publish", channel="watch", data=n)
            assert (await bystander.next("message"))["data"] == n
        # Binary frames carry commands too (raw WebSocket); binary garbage is an error.
        if not sockjs:
            await c.t.ws.send(b'{"op":"ping","id":"bin"}')
            assert (await c.next("reply"))["id"] == "bin"
            await c.t.ws.send(b"\xff\xfe\x00garbage")
            assert (await c.next("error"))["error"]["code"] == "bad_request"
        assert (await health(http, gw))["status"] == "ok"
        await c.close()
        await bystander.close()


@run(timeout=60)
async def test_garbage_raw_websocket(gw):
    mark = log_mark(gw)
    await _barrage(gw, sockjs=False)
    assert_clean_log(gw, mark)


@run(timeout=60)
async def test_garbage_sockjs(gw):
    mark = log_mark(gw)
    await _barrage(gw, sockjs=True)
    assert_clean_log(gw, mark)


@run(timeout=60)
async def test_what_ends_a_connection(gw):
    mark = log_mark(gw)
    """Frames RFC 6455 or SockJS say end the connection: invalid UTF-8 in a text frame
    (1007), a message over max_message_size (1009), broken SockJS framing (dropped)."""
    async with aiohttp.ClientSession() as http:
        c = await ChannelsClient.connect(gw, "/ch")
        # Invalid UTF-8 in a text frame: the websockets client validates what it
        # sends, so write the frame through its protocol object.
        from websockets.frames import Frame, Opcode

        c.t.ws.protocol.send_frame(Frame(Opcode.TEXT, b'{"op":"ping","id":"\xff"}'))
        c.t.ws.send_data()
        assert (await c.closed()).code == 1007
        c = await ChannelsClient.connect(gw, "/ch")
        await c.send({"op": "publish", "channel": "x", "data": "y" * MAX_MESSAGE})
        assert (await c.closed()).code == 1009
        s = await ChannelsClient.connect(gw, "/ch", sockjs=True)
        await s.t.ws.send('["unterminated')
        with pytest.raises(Closed):
            await s.next(timeout=3)
        assert (await health(http, gw))["status"] == "ok"
    assert_clean_log(gw, mark)


# -- hypothesis ------------------------------------------------------------------------------


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
_json = st.recursive(_scalars, lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=12)
_channel = st.sampled_from(["news", "a:b", "x", "", "a b", "é", "c" * 256]) | st.text(max_size=10) | _json
_command = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "publish", "presence", "history", "message",
                            "ping", "bogus"]) | _json},
    optional={"channel": _channel, "data": _json, "limit": st.integers() | _json,
              "since": st.fixed_dictionaries({"offset": st.integers(), "epoch": st.text(max_size=8)}) | _json,
              "token": _json},
)


def _replies_to(ws: wsclient.WebSocket, commands: list) -> None:
    """Send ``commands`` and a final ping; every frame until the ping's reply is well
    formed, and each command with an id gets exactly one reply."""
    expected = []
    for n, cmd in enumerate(commands):
        if isinstance(cmd, dict):
            cmd = {**cmd, "id": n}
            expected.append(n)
        ws.send(json.dumps(cmd))
    ws.send(json.dumps({"op": "ping", "id": "end"}))
    replies: dict = {}
    while True:
        frame = json.loads(ws.recv())
        assert frame["type"] in ("reply", "error", "message", "join", "leave"), frame
        if frame["type"] == "reply":
            assert frame["id"] not in replies, f"two replies to {frame['id']}"
            assert ("result" in frame) != ("error" in frame), frame
            replies[frame["id"]] = frame
            if frame["id"] == "end":
                break
        if "error" in frame:
            assert set(frame["error"]) == {"code", "message"}, frame
    assert sorted(k for k in replies if k != "end") == expected
    assert replies["end"]["result"] == {"pong": True}


def test_fuzz_commands(gw):
    """Generated commands (any JSON in any field) on a fresh connection per example;
    afterwards this gateway (the one fuzzed) answers and logged no traceback or error."""
    mark = log_mark(gw)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(commands=st.lists(_command | _json, min_size=1, max_size=8))
    def fuzz(commands):
        ws = wsclient.create_connection(gw.ws_url + "/ch/websocket", timeout=5)
        try:
            assert json.loads(ws.recv())["type"] == "connected"
            _replies_to(ws, commands)
        finally:
            ws.close()

    fuzz()
    with urllib.request.urlopen(gw.url + "/sockway/health", timeout=5) as r:
        assert json.load(r)["status"] == "ok"
    assert_clean_log(gw, mark)
