"""Byte-exact pass-through (docs/bridge.md, "ZeroMQ" and "HTTP API"): a one-frame
message on the ZeroMQ SUB socket, and an ``/api/broadcast?endpoint=`` body, reach the
clients of the default broadcast endpoint byte for byte, whatever they look like; JSON
is not parsed and re-encoded, ``{"op": "stats"}`` is not run. Commands travel only on
the PULL socket. Real gateway, real ZeroMQ sockets, real clients: a raw WebSocket, SockJS
over WebSocket (its frames read as they arrive), SockJS xhr-polling, and a
channels-protocol subscriber of the endpoint's channel."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest
import zmq
import zmq.asyncio

from realtime import KEY, Api, ChannelsClient, RawWS, SockJSWS, T, XhrSession, health, run, zmq_address
from support import assert_clean_log, config_gateway, log_mark

# The request's three examples, and one that is not UTF-8.
EXAMPLES = [b'{"a": 1, "b": [1, 2]}', b'"quoted"', b'{"op": "stats"}']
NOT_UTF8 = b"\xff\xfe binary \x00 \xc3"


@pytest.fixture(scope="module")
def gw():
    addresses = {name: zmq_address() for name in ("sub", "pull")}
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[zeromq]
sub = "{addresses['sub']}"
pull = "{addresses['pull']}"
default = "endpoint:/bc"

[[endpoint]]
prefix = "/bc"
mode = "broadcast"
history = 20
heartbeat_delay = 1

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[namespace]]
name = ""
subscribe = "open"
history_size = 20
"""
    with config_gateway(config) as proc:
        proc.zmq = addresses
        yield proc


async def xpub(ctx: zmq.asyncio.Context, address: str) -> zmq.asyncio.Socket:
    """A PUB socket (XPUB: it reads subscriptions) that waits until the gateway's SUB
    socket has subscribed, so that nothing it sends is dropped (the slow joiner)."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(address)
    assert await pub.poll(5000), "the gateway's SUB socket never subscribed"
    assert (await pub.recv())[:1] == b"\x01"
    return pub


class SockJSFrames:
    """SockJS over WebSocket, read frame by frame: each ``a[...]`` frame is checked to
    be a JSON array of strings (sockjs-protocol), and its strings are the messages."""

    def __init__(self, transport: SockJSWS) -> None:
        self.ws = transport.ws
        self.queue: list[str] = []

    async def recv_text(self, timeout: float = T) -> str:
        while not self.queue:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            if frame == "h":
                continue
            assert isinstance(frame, str) and frame.startswith("a["), frame
            messages = json.loads(frame[1:])
            assert all(isinstance(m, str) for m in messages), frame
            self.queue.extend(messages)
        return self.queue.pop(0)


class Listeners:
    """Every kind of client of /bc, and a channels-protocol subscriber of its channel."""

    async def open(self, gw, http: aiohttp.ClientSession) -> Listeners:
        self.raw = await RawWS.connect(gw.ws_url + "/bc/websocket")
        self.sockjs = SockJSFrames(await SockJSWS.connect(gw.ws_url + "/bc"))
        self.xhr = await XhrSession(http, gw.url + "/bc").open()
        self.channels = await ChannelsClient.connect(gw, "/ch")
        await self.channels.ok("subscribe", channel="/bc")
        # Every one of them is in: a marker published now reaches each.
        marker = f"ready {os.urandom(4).hex()}"
        await Api(http, gw)("broadcast", endpoint="/bc", data=marker)
        for client in (self.raw, self.sockjs, self.xhr):
            while await client.recv_text() != marker:
                pass
        while (await self.channels.next("message"))["data"] != marker:
            pass
        return self

    async def expect(self, sent: bytes, value: object = None) -> None:
        """``sent`` arrived at every client exactly: a text frame of these bytes on the
        raw WebSocket, this string in SockJS frames and in the channels envelope (or,
        published as a JSON ``value``, that value there)."""
        text = sent.decode("utf-8")
        got = await self.raw.recv_text()
        assert isinstance(got, str) and got.encode("utf-8") == sent, (sent, got)
        assert await self.sockjs.recv_text() == text
        assert await self.xhr.recv_text() == text
        assert (await self.channels.next("message"))["data"] == (text if value is None else value)

    async def expect_binary(self, sent: bytes) -> None:
        """Not UTF-8: binary data. The raw WebSocket gets a binary frame of exactly these
        bytes; SockJS and the channels protocol carry text only, U+FFFD for each
        invalid sequence."""
        assert await self.raw.recv_text() == sent
        text = sent.decode("utf-8", "replace")
        assert await self.sockjs.recv_text() == text
        assert await self.xhr.recv_text() == text
        assert (await self.channels.next("message"))["data"] == text

    async def close(self) -> None:
        for client in (self.raw, self.channels):
            await client.close()
        await self.sockjs.ws.close()


# Whitespace around JSON, a JSON array of commands, a number, nothing, non-ASCII text.
MORE = [b'  {"op": "publish", "channel": "x", "data": 1}\n', b'[{"op": "stats"}]', b"42", b"",
        "\u00e9t\u00e9 \u2603".encode()]


@pytest.mark.parametrize("message", EXAMPLES + MORE + [NOT_UTF8], ids=lambda m: repr(m)[2:30])
@run()
async def test_sub_delivers_byte_for_byte(gw, message):
    mark = log_mark(gw)
    ctx = zmq.asyncio.Context()
    try:
        async with aiohttp.ClientSession() as http:
            clients = await Listeners().open(gw, http)
            pub = await xpub(ctx, gw.zmq["sub"])
            await pub.send(message)
            if message is NOT_UTF8:
                await clients.expect_binary(message)
            else:
                await clients.expect(message)
            # The endpoint's history answers, binary data as its text.
            history = await Api(http, gw)("history", channel="/bc", limit=1)
            assert history["publications"][0]["data"] == message.decode("utf-8", "replace")
            await clients.close()
            assert (await health(http, gw))["status"] == "ok"
    finally:
        ctx.destroy(linger=0)
    assert_clean_log(gw, mark)


@run()
async def test_sub_runs_no_command(gw):
    """A command sent to SUB is data: nothing runs, the clients get its text, and the
    log says where commands go now (a program written for the former rule)."""
    mark = log_mark(gw)
    channel = f"notrun{os.urandom(3).hex()}"
    command = json.dumps({"op": "publish", "channel": channel, "data": 1}).encode()
    ctx = zmq.asyncio.Context()
    try:
        async with aiohttp.ClientSession() as http:
            clients = await Listeners().open(gw, http)
            pub = await xpub(ctx, gw.zmq["sub"])
            await pub.send(command)
            await clients.expect(command)
            assert (await Api(http, gw)("history", channel=channel, limit=0))["offset"] == 0
            await clients.close()
    finally:
        ctx.destroy(linger=0)
    output = gw.output()[mark:]
    assert "a message that looks like a JSON command was delivered as data to endpoint:/bc" in output
    assert "command refused" not in output and "message failed" not in output
    assert_clean_log(gw, mark)


@run()
async def test_commands_travel_on_pull(gw):
    """The explicit form: a JSON command (or array of them) in one frame on PULL. What
    is not a command goes to the default target byte for byte, as on SUB."""
    ctx = zmq.asyncio.Context()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            clients = await Listeners().open(gw, http)
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(gw.zmq["pull"])
            channel = f"pulled{os.urandom(3).hex()}"
            await push.send(json.dumps({"op": "publish", "channel": channel, "data": {"n": 1}}).encode())
            await push.send(json.dumps([{"op": "broadcast", "endpoint": "/bc", "data": "by command"}]).encode())
            await clients.expect(b"by command")
            assert (await api("history", channel=channel, limit=1))["publications"][0]["data"] == {"n": 1}
            for message in (b'{"a": 1, "b": [1, 2]}', b'"quoted"', b"plain text", b"[]"):
                await push.send(message)
                await clients.expect(message)
            await push.send(NOT_UTF8)
            await clients.expect_binary(NOT_UTF8)
            # Two frames [channel, data] publish, on PULL as on SUB.
            await push.send_multipart([b"/bc", b"two frames"])
            await clients.expect(b"two frames")
            await clients.close()
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("message, content_type", [
    (EXAMPLES[0], "application/json"), (EXAMPLES[1], "text/plain"), (EXAMPLES[2], "application/octet-stream"),
    (b"plain text", "application/x-www-form-urlencoded"), (NOT_UTF8, "application/octet-stream")],
    ids=["object", "quoted", "op-stats", "form", "not-utf8"])
@run()
async def test_api_broadcast_raw_body(gw, message, content_type):
    """``POST /api/broadcast?endpoint=/bc``: the body is the message, whatever its
    Content-Type."""
    mark = log_mark(gw)
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        clients = await Listeners().open(gw, http)
        status, answer = await api.raw("POST", "/api/broadcast?endpoint=/bc", message,
                                       {"Content-Type": content_type})
        assert status == 200, answer
        assert answer["result"]["endpoint"] == "/bc"
        if message is NOT_UTF8:
            await clients.expect_binary(message)
        else:
            await clients.expect(message)
        await clients.close()
    assert_clean_log(gw, mark)


@run()
async def test_api_broadcast_command_and_refusals(gw):
    """Without ``?endpoint=`` the body is a JSON command, as before; a raw body is
    refused like a command: no such endpoint, too large, no key."""
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        clients = await Listeners().open(gw, http)
        assert (await api("broadcast", endpoint="/bc", data={"a": 1}))["endpoint"] == "/bc"
        await clients.expect(b'{"a":1}', {"a": 1})
        status, answer = await api.raw("POST", "/api/broadcast?endpoint=/nowhere", b"x")
        assert (status, answer["error"]["code"]) == (404, "not_found")
        status, answer = await api.raw("POST", "/api/broadcast?endpoint=/bc", b"x" * ((1 << 20) + 1))
        assert (status, answer["error"]["code"]) == (413, "too_large")
        status, answer = await Api(http, gw, key=None).raw("POST", "/api/broadcast?endpoint=/bc", b"x")
        assert status == 401
        await clients.close()
