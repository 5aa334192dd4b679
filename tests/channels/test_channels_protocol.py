"""The channels protocol (sockway.hub.channels_mode) end to end, against a real gateway
with real clients on raw WebSocket and on SockJS over WebSocket: replies and errors of
every op, the four permission rules of a namespace, JWT authentication (HS256, RS256,
expiry, signature, algorithm, claims with wildcards, ``sub``, query vs ``auth`` op,
the auth timeout), presence with join/leave, and history with a limit."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import jwt
import pytest

from realtime import (
    KEY,
    SECRET,
    Api,
    ChannelsClient,
    Closed,
    SockJSWS,
    Tokens,
    XhrSession,
    ZmqWorker,
    eventually,
    run,
    zmq_address,
)
from support import config_gateway

AUTH_TIMEOUT = 1.0
DECISION_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return Tokens(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def gw(tokens):
    push = zmq_address()
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[auth]
jwt_secret = "{SECRET}"
jwt_public_key = "{tokens.public_pem}"
leeway = 0

[zeromq]
push = "{push}"

[[endpoint]]
prefix = "/ch"
mode = "channels"
auth_timeout = {DECISION_TIMEOUT}

[[endpoint]]
prefix = "/private"
mode = "channels"
anonymous = false
auth_timeout = {AUTH_TIMEOUT}

[[namespace]]
name = ""
subscribe = "open"
publish = "open"
history_size = 100
presence = true
join_leave = true

[[namespace]]
name = "tok"
subscribe = "token"
publish = "token"

[[namespace]]
name = "app"
subscribe = "app"
publish = "app"

[[namespace]]
name = "ro"
subscribe = "open"
publish = "none"

[[namespace]]
name = "shut"
subscribe = "none"
publish = "none"

[[namespace]]
name = "quiet"
publish = "open"
presence = true
client_presence = false
client_history = false
history_size = 10

[[namespace]]
name = "nopres"
publish = "open"

[[namespace]]
name = "small"
publish = "open"
history_size = 5
max_data_size = 1000

# Channels without history: nothing to keep for them once their subscribers leave.
[[namespace]]
name = "many"
"""
    with config_gateway(config) as proc:
        proc.push = push
        yield proc


TRANSPORTS = [pytest.param(False, id="raw"), pytest.param(True, id="sockjs")]


async def connect(gw, prefix="/ch", sockjs=False, **kw) -> ChannelsClient:
    return await ChannelsClient.connect(gw, prefix, sockjs=sockjs, **kw)


# -- basic replies --------------------------------------------------------------------------


@pytest.mark.parametrize("sockjs", TRANSPORTS)
@run()
async def test_connected_ping_and_anonymous_user(gw, sockjs):
    c = await connect(gw, sockjs=sockjs)
    assert c.welcome["type"] == "connected" and c.welcome["user"] is None and c.conn
    assert await c.ok("ping") == {"pong": True}
    # A string id is echoed as is.
    await c.send({"op": "ping", "id": "abc"})
    assert await c.next("reply") == {"type": "reply", "id": "abc", "result": {"pong": True}}
    # No id, success: no reply at all.
    await c.send({"op": "ping"})
    assert await c.before_marker() == []
    await c.close()


@pytest.mark.parametrize("sockjs", TRANSPORTS)
@run()
async def test_subscribe_publish_unsubscribe(gw, sockjs):
    a = await connect(gw, sockjs=sockjs)
    b = await connect(gw, sockjs=not sockjs)
    channel = f"news{int(sockjs)}"
    sub = await a.ok("subscribe", channel=channel)
    assert sub["channel"] == channel and sub["recovered"] is True and sub["publications"] == []
    assert isinstance(sub["offset"], int) and isinstance(sub["epoch"], str) and sub["epoch"]
    pubs = []
    for i in range(5):
        pubs.append(await b.ok("publish", channel=channel, data={"n": i, "text": "é\u2028<"}))
    assert [p["offset"] for p in pubs] == list(range(sub["offset"] + 1, sub["offset"] + 6))
    assert {p["epoch"] for p in pubs} == {sub["epoch"]}
    got = await a.messages(5)
    assert got == [{"type": "message", "channel": channel, "offset": p["offset"], "epoch": sub["epoch"],
                    "data": {"n": i, "text": "é\u2028<"}} for i, p in enumerate(pubs)]
    assert await a.ok("unsubscribe", channel=channel) == {"unsubscribed": True}
    assert await a.ok("unsubscribe", channel=channel) == {"unsubscribed": False}
    await b.ok("publish", channel=channel, data="after")
    assert await a.before_marker() == []
    await a.close()
    await b.close()


@run()
async def test_protocol_errors(gw):
    c = await connect(gw)
    assert await c.ok("subscribe", channel="dup") is not None
    assert await c.error("subscribe", channel="dup") == "already_subscribed"
    # A trailing newline too: a pattern ending in "$" would let it through.
    for bad in ["", "a b", "x" * 256, 5, None, ["a"], "é", "a\nb", "news\n", "\nnews"]:
        assert await c.error("subscribe", channel=bad) == "bad_channel", bad
        assert await c.error("publish", channel=bad, data=1) == "bad_channel", bad
    assert await c.error("frobnicate") == "unknown_op"
    assert await c.error("publish", channel="dup") == "bad_request"  # no data
    assert await c.error("presence", channel="elsewhere") == "not_subscribed"
    assert await c.error("history", channel="elsewhere") == "not_subscribed"
    for limit in (-1, "3", 1.5, True):
        assert await c.error("history", channel="dup", limit=limit) == "bad_request"
    for since in ({"offset": "1", "epoch": "x"}, {"offset": 1}, 5, {"offset": True, "epoch": "e"}):
        assert await c.error("subscribe", channel="other", since=since) == "bad_request"
    assert await c.error("publish", channel="small:x", data="x" * 2000) == "too_large"
    assert await c.error("message") == "bad_request"  # no data
    assert set(await c.ok("message", data="hi")) == {"event"}
    # Commands without an id that fail get an "error" frame.
    for text, code in [("not json", "bad_request"), ("[1,2]", "bad_request"), ('"str"', "bad_request"),
                       ("{}", "unknown_op"), ('{"op": 5}', "unknown_op"), ('{"op": "subscribe"}', "bad_channel")]:
        await c.send(text)
        frame = await c.next()
        assert frame["type"] == "error" and frame["error"]["code"] == code, (text, frame)
    await c.send({"op": "ping", "id": {"an": "object"}})
    frame = await c.next()
    assert frame["type"] == "error" and frame["error"]["code"] == "bad_request"
    # Still serving.
    assert await c.ok("ping") == {"pong": True}
    await c.close()


# -- permissions ----------------------------------------------------------------------------


@run()
async def test_permission_open_none(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        c = await connect(gw)
        await c.ok("subscribe", channel="ro:feed")
        assert await c.error("publish", channel="ro:feed", data=1) == "forbidden"
        assert await c.error("subscribe", channel="shut:x") == "forbidden"
        assert await c.error("publish", channel="shut:x", data=1) == "forbidden"
        # The application may subscribe a connection where a client may not, and
        # publish where clients may not.
        await api("subscribe", conn=c.conn, channel="shut:x")
        await api("publish", channel="shut:x", data={"from": "app"})
        await api("publish", channel="ro:feed", data="feed")
        got = {m["channel"]: m["data"] for m in await c.messages(2)}
        assert got == {"shut:x": {"from": "app"}, "ro:feed": "feed"}
        await c.close()


@pytest.mark.parametrize("kind", ["hs", "rs"])
@run()
async def test_permission_token_claims(gw, tokens, kind):
    make = tokens.hs if kind == "hs" else tokens.rs
    token = make("bob", channels=["tok:news", "tok:chat.*"], publish="tok:chat.*")
    c = await connect(gw, token=token)
    assert c.welcome["user"] == "bob"
    assert (await c.ok("subscribe", channel="tok:news"))["channel"] == "tok:news"
    await c.ok("subscribe", channel="tok:chat.room1")
    assert await c.error("subscribe", channel="tok:secret") == "forbidden"
    assert await c.error("subscribe", channel="tok:chat") == "forbidden"
    await c.ok("publish", channel="tok:chat.room1", data="hi")
    assert (await c.next("message"))["data"] == "hi"
    assert await c.error("publish", channel="tok:news", data="no") == "forbidden"
    anonymous = await connect(gw)
    assert await anonymous.error("subscribe", channel="tok:news") == "forbidden"
    assert await anonymous.error("publish", channel="tok:chat.room1", data=1) == "forbidden"
    # A token without the claims grants nothing; a non-list claim grants nothing.
    bare = await connect(gw, token=make("carol", channels={"tok:news": True}))
    assert await bare.error("subscribe", channel="tok:news") == "forbidden"
    for client in (c, anonymous, bare):
        await client.close()


@run(timeout=30)
async def test_permission_app_decides(gw):
    worker = ZmqWorker(gw.push)
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            c = await connect(gw)

            async def decide(kind: str, allow: bool, reason: str = "", via: str = "reply") -> dict:
                event = await worker.event(match=lambda e: e.get("conn") == c.conn and e["type"] == kind)
                assert event["channel"] == "app:room" and event["endpoint"] == "/ch"
                if via == "reply":
                    assert await api("reply", event=event["id"], allow=allow, reason=reason) == {
                        "event": event["id"]}
                else:
                    status, body = await api.post("commands", [
                        {"op": "reply", "event": event["id"], "allow": allow, "reason": reason}])
                    assert status == 200 and "result" in body["results"][0], body
                return event

            # Allowed: the reply comes after the application's answer.
            request = asyncio.ensure_future(c.request("subscribe", channel="app:room", timeout=5))
            await decide("subscribe", True)
            reply = await request
            assert reply["result"]["channel"] == "app:room", reply
            # Refused with a reason, over the batch endpoint.
            request = asyncio.ensure_future(c.request("publish", channel="app:room", data="x", timeout=5))
            await decide("publish", False, "muted", via="commands")
            reply = await request
            assert reply["error"] == {"code": "forbidden", "message": "muted"}
            # Allowed publish reaches subscribers.
            request = asyncio.ensure_future(c.request("publish", channel="app:room", data="ok", timeout=5))
            await decide("publish", True)
            assert "result" in await request
            assert (await c.next("message"))["data"] == "ok"
            # A second answer to the same event is a 404.
            status, body = await api.post("reply", {"event": "nope-1", "allow": True})
            assert status == 404 and body["error"]["code"] == "not_found"
            # Two requests for one channel, both allowed: the second is refused as a
            # duplicate, not answered with a made-up position.
            await c.send({"op": "subscribe", "channel": "app:dup", "id": "dup1"})
            await c.send({"op": "subscribe", "channel": "app:dup", "id": "dup2"})
            for _ in range(2):
                event = await worker.event(match=lambda e: e.get("conn") == c.conn
                                           and e.get("channel") == "app:dup")
                await api("reply", event=event["id"], allow=True)
            replies = sorted([await c.next("reply"), await c.next("reply")], key=lambda r: "error" in r)
            assert replies[0]["result"]["channel"] == "app:dup" and replies[0]["result"]["epoch"]
            assert replies[1]["error"]["code"] == "already_subscribed", replies
            # No answer in time: forbidden.
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await c.request("subscribe", channel="app:other", timeout=DECISION_TIMEOUT + 3)
            assert reply["error"]["code"] == "forbidden", reply
            assert DECISION_TIMEOUT - 0.2 <= loop.time() - started <= DECISION_TIMEOUT + 2
            await c.close()
    finally:
        worker.close()


# -- authentication -------------------------------------------------------------------------


async def _raw_refused(gw, prefix: str, token: str) -> Closed:
    """A raw WebSocket with a bad token opens and is closed at once with 4001 (a
    browser could not read an HTTP refusal), before any "connected" frame."""
    client = await ChannelsClient.connect(gw, prefix, token=token, welcome=False)
    closed = await client.closed(timeout=3)
    assert not [m for m in client.inbox if m.get("type") == "connected"]
    return closed


async def _sockjs_refused(gw, prefix: str, token: str) -> Closed:
    t = await SockJSWS.connect(gw.ws_url + prefix, query=f"token={token}")
    client = ChannelsClient(t)
    closed = await client.closed(timeout=3)
    assert not [m for m in client.inbox if m.get("type") == "connected"]
    return closed


def _forged(tokens: Tokens) -> dict[str, str]:
    """Tokens the gateway must refuse, each for a different reason."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(tokens.claims("mallory")).encode()).rstrip(b"=").decode()
    return {
        "expired": tokens.hs(ttl=-60),
        "expired_rs": tokens.rs(ttl=-60),
        "wrong_secret": tokens.hs(secret="another-secret-long-enough-for-hs256-hs384-hs512-0123456789abcd"),
        "wrong_rsa_key": tokens.rs(key=tokens.other_key),
        "hs384": tokens.hs(algorithm="HS384"),
        "alg_none": f"{header}.{payload}.",
        # The classic confusion: HS256 keyed with the RSA public key.
        "hs256_with_public_key": _hmac_token(tokens.public_bytes, tokens.claims("mallory")),
        "garbage": "not.a.token",
        "no_exp": jwt.encode({"sub": "x"}, SECRET, algorithm="HS256"),
        "tampered": _tamper(tokens.hs()),
    }


def _hmac_token(key: bytes, claims: dict) -> str:
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signing + "." + b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())


def _tamper(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{payload}.{sig}"


@run(timeout=60)
async def test_bad_tokens_refused(gw, tokens):
    for name, token in _forged(tokens).items():
        for prefix in ("/ch", "/private"):
            raw = await _raw_refused(gw, prefix, token)
            assert raw.code == 4001 and raw.reason, (name, prefix, raw)
            closed = await _sockjs_refused(gw, prefix, token)
            assert closed.code == 4001, (name, prefix, closed)
        # With the auth op: an error reply, then close 4001.
        c = await connect(gw, "/private", welcome=False)
        reply = await c.request("auth", token=token)
        assert reply["error"]["code"] == "unauthorized", (name, reply)
        assert (await c.closed()).code == 4001
    # SockJS over plain HTTP (xhr-polling): the session opens, then closes with 4001.
    async with aiohttp.ClientSession() as http:
        for token in (tokens.hs(ttl=-60), "garbage"):
            session = await XhrSession(http, gw.url + "/ch").open(f"token={token}")
            with pytest.raises(Closed) as closed:
                await session.recv_text()
            assert closed.value.code == 4001
        session = await XhrSession(http, gw.url + "/private").open(f"token={tokens.hs('gina')}")
        assert json.loads(await session.recv_text())["user"] == "gina"


@pytest.mark.parametrize("sockjs", TRANSPORTS)
@pytest.mark.parametrize("kind", ["hs", "rs"])
@run()
async def test_good_tokens(gw, tokens, kind, sockjs):
    make = tokens.hs if kind == "hs" else tokens.rs
    # In the query: welcomed at once, user from sub.
    c = await connect(gw, "/private", sockjs=sockjs, token=make("dave"))
    assert c.welcome["user"] == "dave"
    await c.ok("subscribe", channel="lobby")
    # With the auth op: nothing before it but errors, then the reply and the welcome.
    d = await connect(gw, "/private", sockjs=sockjs, welcome=False)
    assert await d.error("subscribe", channel="lobby") == "unauthorized"
    reply = await d.ok("auth", token=make("erin"))
    welcome = await d.next("connected")
    assert reply == {"conn": welcome["conn"], "user": "erin"} and welcome["user"] == "erin"
    await d.ok("subscribe", channel="lobby")
    assert await d.error("auth", token=make("erin")) == "bad_request"  # already authenticated
    # A token without sub: authenticated, no user.
    e = await connect(gw, "/private", sockjs=sockjs, token=make(None))
    assert e.welcome["user"] is None
    for client in (c, d, e):
        await client.close()


@run()
async def test_auth_after_connecting_anonymously(gw, tokens):
    """On an anonymous endpoint a client logs in later: one welcome, one open event, then
    an auth event; presence shows the user."""
    worker = ZmqWorker(gw.push)
    try:
        c = await connect(gw)
        assert c.welcome["user"] is None
        assert await c.ok("auth", token=tokens.rs("frank")) == {"conn": c.conn, "user": "frank"}
        await c.ok("subscribe", channel="login-room")
        presence = await c.ok("presence", channel="login-room")
        assert presence["clients"][c.conn]["user"] == "frank"
        assert await c.error("auth", token=tokens.rs("frank")) == "bad_request"
        assert [m for m in await c.before_marker() if m.get("type") == "connected"] == []
        await c.close()
        events = await worker.events_of(c.conn, 3)
        assert [(e["type"], e["seq"], e.get("user")) for e in events] == [
            ("open", 1, None), ("auth", 2, "frank"), ("close", 3, None)]
    finally:
        worker.close()


@pytest.mark.parametrize("sockjs", TRANSPORTS)
@run()
async def test_auth_timeout(gw, sockjs):
    loop = asyncio.get_running_loop()
    started = loop.time()
    c = await connect(gw, "/private", sockjs=sockjs, welcome=False)
    await c.send({"op": "ping", "id": 1})  # refused, does not count as authentication
    closed = await c.closed(timeout=AUTH_TIMEOUT + 3)
    assert closed.code == 4002, closed
    assert AUTH_TIMEOUT - 0.1 <= loop.time() - started <= AUTH_TIMEOUT + 2
    assert c.inbox[0]["error"]["code"] == "unauthorized"


# -- presence -------------------------------------------------------------------------------


@run()
async def test_presence_and_join_leave(gw, tokens):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        a = await connect(gw, token=tokens.hs("alice", info={"name": "Alice"}))
        await a.ok("subscribe", channel="room")
        b = await connect(gw, sockjs=True, token=tokens.rs("bob"))
        await b.ok("subscribe", channel="room")
        join = await a.next("join")
        assert join == {"type": "join", "channel": "room", "conn": b.conn,
                        "info": {"conn": b.conn, "user": "bob"}}
        clients = (await a.ok("presence", channel="room"))["clients"]
        assert clients == {a.conn: {"conn": a.conn, "user": "alice", "info": {"name": "Alice"}},
                           b.conn: {"conn": b.conn, "user": "bob"}}
        assert (await api("presence", channel="room"))["clients"] == clients
        status, body = await api.get("/api/presence?channel=room")
        assert status == 200 and body["result"]["clients"] == clients
        await b.ok("unsubscribe", channel="room")
        assert await a.next("leave") == {"type": "leave", "channel": "room", "conn": b.conn}
        await b.ok("subscribe", channel="room")
        assert (await a.next("join"))["conn"] == b.conn
        await b.close()
        assert await a.next("leave") == {"type": "leave", "channel": "room", "conn": b.conn}
        assert list((await a.ok("presence", channel="room"))["clients"]) == [a.conn]
        # Presence without join/leave, not open to clients; and no presence at all.
        await a.ok("subscribe", channel="quiet:x")
        c = await connect(gw)
        await c.ok("subscribe", channel="quiet:x")
        assert await a.error("presence", channel="quiet:x") == "not_enabled"
        assert set((await api("presence", channel="quiet:x"))["clients"]) == {a.conn, c.conn}
        await a.ok("subscribe", channel="nopres:x")
        assert await a.error("presence", channel="nopres:x") == "not_enabled"
        status, body = await api.post("presence", {"channel": "nopres:x"})
        assert status == 409 and body["error"]["code"] == "not_enabled"
        assert [m for m in await a.before_marker() if m["type"] in ("join", "leave")] == []
        await a.close()
        await c.close()


# -- history --------------------------------------------------------------------------------


@run()
async def test_history_with_limit(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        c = await connect(gw)
        sub = await c.ok("subscribe", channel="hist")
        sent = [await api("publish", channel="hist", data={"i": i}) for i in range(20)]
        await c.messages(20)
        full = await c.ok("history", channel="hist")
        assert [p["data"] for p in full["publications"]] == [{"i": i} for i in range(20)]
        assert [p["offset"] for p in full["publications"]] == [s["offset"] for s in sent]
        assert full["offset"] == sent[-1]["offset"] and full["epoch"] == sub["epoch"]
        last5 = await c.ok("history", channel="hist", limit=5)
        assert [p["data"]["i"] for p in last5["publications"]] == [15, 16, 17, 18, 19]
        assert (await c.ok("history", channel="hist", limit=0))["publications"] == []
        since = await c.ok("history", channel="hist", limit=3,
                           since={"offset": sent[9]["offset"], "epoch": sub["epoch"]})
        assert [p["data"]["i"] for p in since["publications"]] == [10, 11, 12]
        # A small history keeps the last five.
        await c.ok("subscribe", channel="small:h")
        for i in range(8):
            await c.ok("publish", channel="small:h", data=i)
        small = await c.ok("history", channel="small:h")
        assert [p["data"] for p in small["publications"]] == [3, 4, 5, 6, 7]
        # Over the API, with the publisher info kept.
        status, body = await api.get("/api/history?channel=small:h&limit=2")
        assert status == 200 and [p["data"] for p in body["result"]["publications"]] == [6, 7]
        assert body["result"]["publications"][0]["info"]["conn"] == c.conn
        # Not open to clients on this namespace.
        await c.ok("subscribe", channel="quiet:h")
        assert await c.error("history", channel="quiet:h") == "not_enabled"
        await c.close()


@run(timeout=60)
async def test_subscriptions_per_client_are_bounded(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        before = (await api.stats())["broker"]["channels"]
        c = await connect(gw)
        for i in range(1030):
            await c.send({"op": "subscribe", "channel": f"many:{i}", "id": i})
        replies = {}
        while len(replies) < 1030:
            reply = await c.next("reply")
            replies[reply["id"]] = reply
        assert all("result" in replies[i] for i in range(1024))
        assert {replies[i]["error"]["code"] for i in range(1024, 1030)} == {"too_many_channels"}
        # Unsubscribing makes room; the application may subscribe beyond the bound.
        await c.ok("unsubscribe", channel="many:0")
        await c.ok("subscribe", channel="many:extra")
        assert (await api("subscribe", conn=c.conn, channel="many:by-app"))["channel"] == "many:by-app"
        await c.close()

        async def back_to_before() -> bool:
            return (await api.stats())["broker"]["channels"] <= before

        await eventually(back_to_before)
