"""The browser helper /sockway.js, in headless Chromium, against a real gateway.

The page loads /sockjs.min.js and /sockway.js from the gateway (another origin) and
speaks the channels protocol through the helper, over SockJS (websocket, xhr-streaming,
xhr-polling) and native WebSocket. Publications come from the HTTP API, from the page
itself or from another page. Disconnections are forced from the server (the API's
``close`` command, with the connection id of the ``connected`` frame) or by closing the
page's socket. Every wait is bounded (helper_driver.WAIT_MS).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import jwt
import pytest
from helper_driver import JWT_SECRET, SHORT_HISTORY, Api, HelperPage

pytestmark = pytest.mark.browser

# Test name -> (options of new Sockway(), what client.transport then says).
TRANSPORTS = {
    "sockjs-websocket": ({"transport": "sockjs", "sockjsOptions": {"transports": ["websocket"]}},
                         "sockjs/websocket"),
    "sockjs-xhr-streaming": ({"transport": "sockjs", "sockjsOptions": {"transports": ["xhr-streaming"]}},
                             "sockjs/xhr-streaming"),
    "sockjs-xhr-polling": ({"transport": "sockjs", "sockjsOptions": {"transports": ["xhr-polling"]}},
                           "sockjs/xhr-polling"),
    "websocket": ({"transport": "websocket"}, "websocket"),
}
ALL = pytest.mark.parametrize("transport", list(TRANSPORTS))

# Reconnect quickly, and answer within a bounded time.
FAST = {"minDelay": 50, "maxDelay": 200, "timeout": 5000}
# No automatic reconnect within a test: the test publishes while the page is away, then
# calls connect(), which retries at once.
MANUAL = {"minDelay": 60_000, "maxDelay": 60_000, "timeout": 5000}

PageFactory = Callable[..., HelperPage]


def channel(prefix: str = "") -> str:
    return f"{prefix}t{uuid.uuid4().hex[:12]}"


def token(sub: str, **claims) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, JWT_SECRET, algorithm="HS256")


def options(transport: str, **extra) -> dict:
    return {**TRANSPORTS[transport][0], **extra}


def connect(page: HelperPage, transport: str, name: str = "c", path: str = "/live", **extra) -> dict:
    connected = page.connect(name, path, **options(transport, **extra))
    assert connected["transport"] == TRANSPORTS[transport][1], connected
    assert isinstance(connected["conn"], str) and connected["conn"]
    return connected


def check_sequence(messages: list[dict], expected: list, offsets: list[int], page: HelperPage) -> None:
    """Exactly ``expected``, in order, with the given offsets: nothing lost, nothing twice."""
    got = [m["data"] for m in messages]
    assert got == expected, f"got {got}\nexpected {expected}\n{page.report('c')}"
    assert [m["offset"] for m in messages] == offsets


def force_away(page: HelperPage, api: Api, conn: str, code: int = 3000) -> dict:
    """Close the page's connection from the server and wait for the helper to notice."""
    before = len(page.events("c", "disconnected"))
    assert api("close", conn=conn, code=code, reason="test")["conn"] == conn
    page.wait("H.clients.c.events.filter((e) => e.event === 'disconnected').length > args[0]",
              before, what="the disconnected event", client="c")
    return page.events("c", "disconnected")[-1]


# -- publications ------------------------------------------------------------------------


@ALL
def test_publications_from_the_api_arrive_in_order(open_page: PageFactory, api: Api, transport: str) -> None:
    page = open_page()
    connect(page, transport, **FAST)
    ch = channel()
    subscribed = page.subscribe("c", ch)
    assert subscribed["recovering"] is False and isinstance(subscribed["epoch"], str)
    items = [{"n": i} for i in range(10)] + ["zażółć 😀", None, [1, 2]]
    offsets = api.publish_all(ch, items)
    messages = page.wait_messages("c", ch, len(items))
    check_sequence(messages, items, offsets, page)
    assert all(m["channel"] == ch and m["epoch"] == subscribed["epoch"] for m in messages)
    assert not any(m.get("recovered") for m in messages)


def test_publish_from_one_page_reaches_another(open_page: PageFactory) -> None:
    a, b = open_page(), open_page()
    connect(a, "websocket", name="c", **FAST)
    connect(b, "sockjs-xhr-streaming", name="c", **FAST)
    ch = channel()
    a.subscribe("c", ch)
    b.subscribe("c", ch)
    reply = a.ok("c", "publish", {"text": "hi from a"}, channel=ch)
    assert reply["channel"] == ch and isinstance(reply["offset"], int)
    got_b = b.wait_messages("c", ch, 1)
    assert got_b[0]["data"] == {"text": "hi from a"} and got_b[0]["offset"] == reply["offset"]
    assert a.wait_messages("c", ch, 1)[0]["offset"] == reply["offset"]  # its own, too
    reply2 = b.ok("c", "publish", ch, "hi from b")  # client.publish(channel, data)
    assert reply2["offset"] == reply["offset"] + 1
    assert [m["data"] for m in a.wait_messages("c", ch, 2)] == [{"text": "hi from a"}, "hi from b"]


def test_presence_join_and_leave(open_page: PageFactory) -> None:
    a, b = open_page(), open_page()
    conn_a = connect(a, "sockjs-websocket", **FAST)["conn"]
    conn_b = connect(b, "websocket", **FAST)["conn"]
    ch = channel()
    a.subscribe("c", ch)
    b.subscribe("c", ch)
    join = a.wait_sub_event("c", ch, "join")
    assert join["channel"] == ch and join["conn"] == conn_b
    assert join["info"] == {"conn": conn_b, "user": None}
    presence = b.ok("c", "presence", channel=ch)
    assert presence["channel"] == ch and set(presence["clients"]) == {conn_a, conn_b}
    assert b.ok("c", "unsubscribe", channel=ch) == {"unsubscribed": True}
    leave = a.wait_sub_event("c", ch, "leave")
    assert leave == {"channel": ch, "conn": conn_b, "info": None}
    assert set(a.ok("c", "presence", channel=ch)["clients"]) == {conn_a}
    # A page that goes away leaves too.
    b.subscribe("c", ch)
    a.wait_sub_event("c", ch, "join", 2)
    b.call("disconnect", "c")
    assert a.wait_sub_event("c", ch, "leave", 2)["conn"] == conn_b


def test_history_and_subscribing_before_connect(open_page: PageFactory, api: Api) -> None:
    ch = channel()
    offsets = api.publish_all(ch, [f"m{i}" for i in range(5)])
    page = open_page()
    page.client("c", "/live", **options("sockjs-xhr-streaming", **FAST))
    page.call("subscribe", "c", ch, {})  # before connect(): sent once connected
    page.call("connect", "c")
    assert page.ok("c", "ready", channel=ch) == {"subscription": ch, "state": "subscribed"}
    subscribed = page.wait_sub_event("c", ch, "subscribed")
    assert subscribed["offset"] == offsets[-1] and subscribed["recovering"] is False
    last3 = page.ok("c", "history", {"limit": 3}, channel=ch)
    assert [p["data"] for p in last3["publications"]] == ["m2", "m3", "m4"]
    assert [p["offset"] for p in last3["publications"]] == offsets[2:]
    everything = page.ok("c", "history", channel=ch)
    assert [p["data"] for p in everything["publications"]] == [f"m{i}" for i in range(5)]
    assert page.messages("c", ch) == []  # history is an answer, not deliveries


def test_send_goes_to_the_application_and_back(open_page: PageFactory, application) -> None:
    page = open_page()
    conn = connect(page, "sockjs-xhr-streaming", **FAST)["conn"]
    reply = page.ok("c", "send", {"hello": "app"})
    assert isinstance(reply["event"], str)
    page.wait("H.clients.c.events.some((e) => e.event === 'message')", what="the application's answer",
              client="c")
    assert page.events("c", "message") == [{"data": {"echo": {"hello": "app"}}}]
    assert any(e["type"] == "message" and e["conn"] == conn and e["data"] == {"hello": "app"}
               for e in application.events)


def test_refusals_are_errors_with_the_server_code(open_page: PageFactory) -> None:
    page = open_page()
    connect(page, "websocket", **FAST)
    outcome = page.request("c", "publish", "closed:x", "no")
    assert outcome["error"]["code"] == "forbidden", outcome
    page.call("subscribe", "c", "closed:x", {})
    error = page.wait_sub_event("c", "closed:x", "error")
    assert error["code"] == "forbidden" and error["channel"] == "closed:x"
    assert page.snapshot("c")["subs"]["closed:x"]["state"] == "unsubscribed"
    page.call("subscribe", "c", "no spaces", {})
    assert page.wait_sub_event("c", "no spaces", "error")["code"] == "bad_channel"
    assert page.ok("c", "ping") == {"pong": True}
    page.call("disconnect", "c")
    assert page.request("c", "ping")["error"]["code"] == "disconnected"


# -- reconnecting and recovering ----------------------------------------------------------


@ALL
def test_reconnect_recovers_exactly_what_was_missed(open_page: PageFactory, api: Api,
                                                    transport: str) -> None:
    page = open_page()
    first = connect(page, transport, **MANUAL)
    ch = channel()
    page.subscribe("c", ch)
    live = api.publish_all(ch, ["live 0", "live 1", "live 2"])
    page.wait_messages("c", ch, 3)

    gone = force_away(page, api, first["conn"])
    assert gone["code"] == 3000 and gone["reconnect"] is True and gone["delay"] == 60_000
    assert page.snapshot("c")["state"] == "connecting"
    missed = api.publish_all(ch, [f"missed {i}" for i in range(7)])
    page.call("connect", "c")  # retry now rather than in a minute
    second = page.wait_connected("c", 2)
    assert second["conn"] != first["conn"]

    subscribed = page.wait_sub_event("c", ch, "subscribed", 2)
    assert subscribed["recovering"] is True and subscribed["recovered"] is True
    assert page.wait_sub_event("c", ch, "recovered")["count"] == 7
    after = api.publish_all(ch, ["after 0", "after 1"])
    messages = page.wait_messages("c", ch, 12)
    expected = ["live 0", "live 1", "live 2", *[f"missed {i}" for i in range(7)], "after 0", "after 1"]
    check_sequence(messages, expected, live + missed + after, page)
    assert [bool(m.get("recovered")) for m in messages] == [False] * 3 + [True] * 7 + [False] * 2
    assert page.events("c", "unrecoverable", ch) == []
    # And nothing more: a marker published now is the next message.
    marker = api.publish_all(ch, ["marker"])
    assert [(m["data"], m["offset"]) for m in page.wait_messages("c", ch, 13)[12:]] == [("marker", marker[0])]


@ALL
def test_unrecoverable_when_history_no_longer_covers_the_gap(open_page: PageFactory, api: Api,
                                                             transport: str) -> None:
    page = open_page()
    conn = connect(page, transport, **MANUAL)["conn"]
    ch = channel("short:")
    page.subscribe("c", ch)
    live = api.publish_all(ch, ["live 0", "live 1"])
    page.wait_messages("c", ch, 2)

    force_away(page, api, conn)
    away = SHORT_HISTORY + 3
    missed = api.publish_all(ch, [f"missed {i}" for i in range(away)])
    page.call("connect", "c")
    page.wait_connected("c", 2)
    subscribed = page.wait_sub_event("c", ch, "subscribed", 2)
    assert subscribed["recovering"] is True and subscribed["recovered"] is False
    lost = page.wait_sub_event("c", ch, "unrecoverable")
    assert lost["channel"] == ch and lost["since"]["offset"] == live[-1]
    assert lost["offset"] == missed[-1]
    # What the server still had is in the event, not delivered as messages.
    assert [p["offset"] for p in lost["publications"]] == missed[-SHORT_HISTORY:]
    assert page.events("c", "recovered", ch) == []

    after = api.publish_all(ch, ["after 0", "after 1"])
    messages = page.wait_messages("c", ch, 4)
    check_sequence(messages, ["live 0", "live 1", "after 0", "after 1"], live + after, page)


@ALL
def test_automatic_reconnects_keep_a_stream_whole(open_page: PageFactory, api: Api, transport: str) -> None:
    """Publications every 20 ms while the connection is closed twice, once by the
    server and once by the page: every one arrives once, in order."""
    page = open_page()
    conn = connect(page, transport, **FAST)["conn"]
    ch = channel()
    page.subscribe("c", ch)
    items = [f"#{i}" for i in range(36)]
    offsets = api.publish_all(ch, items[:10], pause=0.02)
    api("close", conn=conn)
    offsets += api.publish_all(ch, items[10:20], pause=0.02)
    page.wait_connected("c", 2)
    offsets += api.publish_all(ch, items[20:25], pause=0.02)
    page.call("breakSocket", "c")
    offsets += api.publish_all(ch, items[25:], pause=0.02)
    page.wait_connected("c", 3)
    messages = page.wait_messages("c", ch, len(items))
    check_sequence(messages, items, offsets, page)
    disconnected = page.events("c", "disconnected")
    assert [d["code"] for d in disconnected] == [3000, 1000], disconnected
    assert all(d["reconnect"] and 50 <= d["delay"] <= 200 for d in disconnected), disconnected
    assert all(s["recovered"] for s in page.events("c", "subscribed", ch)[1:])
    # Nothing twice: a marker published now is the next message.
    marker = api.publish_all(ch, ["marker"])
    got = page.wait_messages("c", ch, len(items) + 1)[len(items):]
    assert [(m["data"], m["offset"]) for m in got] == [("marker", marker[0])]


def test_recovers_a_channel_that_had_no_publications_yet(open_page: PageFactory, api: Api) -> None:
    page = open_page()
    conn = connect(page, "websocket", **MANUAL)["conn"]
    ch = channel()
    page.subscribe("c", ch)
    force_away(page, api, conn)
    missed = api.publish_all(ch, ["a", "b", "c"])
    page.call("connect", "c")
    subscribed = page.wait_sub_event("c", ch, "subscribed", 2)
    assert subscribed["recovered"] is True, subscribed
    check_sequence(page.wait_messages("c", ch, 3), ["a", "b", "c"], missed, page)


def test_channel_without_history_is_not_recovered(open_page: PageFactory, api: Api) -> None:
    """The subscribe reply says recoverable: false; the helper then does not ask for
    what it missed (it would be told each time that it cannot have it)."""
    page = open_page()
    conn = connect(page, "websocket", **MANUAL)["conn"]
    ch = channel("nohist:")
    page.subscribe("c", ch)
    api("publish", channel=ch, data="before")
    page.wait_messages("c", ch, 1)
    force_away(page, api, conn)
    api("publish", channel=ch, data="lost")
    page.call("connect", "c")
    subscribed = page.wait_sub_event("c", ch, "subscribed", 2)
    assert subscribed["recovering"] is False
    api("publish", channel=ch, data="after")
    assert [m["data"] for m in page.wait_messages("c", ch, 2)] == ["before", "after"]
    assert page.events("c", "unrecoverable", ch) == []


def test_disconnect_is_final_until_connect(open_page: PageFactory, api: Api) -> None:
    page = open_page()
    connect(page, "sockjs-websocket", **FAST)
    ch = channel()
    page.subscribe("c", ch)
    first = api.publish_all(ch, ["one"])
    page.wait_messages("c", ch, 1)
    page.call("disconnect", "c")
    snapshot = page.snapshot("c")
    assert snapshot["state"] == "disconnected" and snapshot["subs"][ch]["state"] == "subscribing"
    assert page.events("c", "disconnected")[-1] == {"code": 1000, "reason": "disconnect() called",
                                                    "reconnect": False}
    missed = api.publish_all(ch, ["two", "three"])
    time.sleep(0.5)  # ten reconnect delays: none may happen
    assert page.snapshot("c")["state"] == "disconnected"
    assert len(page.events("c", "connected")) == 1
    page.call("connect", "c")
    page.wait_connected("c", 2)
    check_sequence(page.wait_messages("c", ch, 3), ["one", "two", "three"], first + missed, page)


@pytest.mark.parametrize("code", [4003, 4001])
def test_no_reconnect_after_do_not_retry_codes(open_page: PageFactory, api: Api, code: int) -> None:
    page = open_page()
    conn = connect(page, "sockjs-xhr-streaming", **FAST)["conn"]
    gone = force_away(page, api, conn, code=code)
    assert gone["code"] == code and gone["reconnect"] is False
    time.sleep(0.5)
    snapshot = page.snapshot("c")
    assert snapshot["state"] == "disconnected" and len(page.events("c", "connected")) == 1


def test_backoff_resets_after_a_stable_connection(open_page: PageFactory, api: Api) -> None:
    page = open_page()
    conn = connect(page, "websocket", minDelay=50, maxDelay=1000, stableAfter=2500, timeout=5000)["conn"]
    force_away(page, api, conn)
    conn = page.wait_connected("c", 2)["conn"]
    force_away(page, api, conn)  # well before stableAfter: the second attempt in a row
    page.wait_connected("c", 3)
    assert page.snapshot("c")["attempts"] == 2
    delays = [d["delay"] for d in page.events("c", "disconnected")]
    assert 50 <= delays[0] <= 100 and 50 <= delays[1] <= 200, delays
    page.wait("H.clients.c.client._attempts === 0", what="the attempt counter to reset", client="c")


# -- tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sockjs-xhr-streaming", "sockjs-websocket", "websocket"])
@pytest.mark.parametrize("token_in", ["url", "auth"])
def test_token(open_page: PageFactory, api: Api, transport: str, token_in: str) -> None:
    page = open_page()
    connected = connect(page, transport, path="/secure", token=token("alice"), tokenIn=token_in, **FAST)
    assert connected["user"] == "alice"
    ch = channel()
    page.subscribe("c", ch)
    api("publish", channel=ch, data="for alice")
    assert page.wait_messages("c", ch, 1)[0]["data"] == "for alice"


@pytest.mark.parametrize(("transport", "token_in"), [
    ("sockjs-xhr-streaming", "url"),
    ("sockjs-websocket", "url"),
    ("sockjs-xhr-streaming", "auth"),
    ("websocket", "auth"),
    ("websocket", "url"),
])
def test_bad_token_is_not_retried(open_page: PageFactory, transport: str, token_in: str) -> None:
    page = open_page()
    forged = jwt.encode({"sub": "mallory"}, "another secret of at least 32 bytes!!", algorithm="HS256")
    page.client("c", "/secure", **options(transport, token=forged, tokenIn=token_in, **FAST))
    page.call("connect", "c")
    page.wait("H.clients.c.events.some((e) => e.event === 'disconnected')", what="the refusal",
              client="c")
    gone = page.events("c", "disconnected")[0]
    assert gone["code"] == 4001 and gone["reconnect"] is False, gone
    time.sleep(0.5)
    states = [e["newState"] for e in page.events("c", "state")]
    assert states == ["connecting", "disconnected"] and page.events("c", "connected") == []
    if token_in == "auth":
        errors = page.events("c", "error")
        assert errors and errors[0]["type"] == "auth" and errors[0]["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("transport", ["sockjs-xhr-streaming", "websocket"])
def test_auth_op_on_an_anonymous_endpoint(open_page: PageFactory, api: Api, transport: str) -> None:
    """The gateway welcomes an anonymous connection at once, then again after the auth
    op: the helper reports one connection, with the token's user."""
    page = open_page()
    connected = connect(page, transport, path="/live", token=token("dora"), tokenIn="auth", **FAST)
    assert connected["user"] == "dora"
    ch = channel()
    page.subscribe("c", ch)
    api("publish", channel=ch, data="for dora")
    assert page.wait_messages("c", ch, 1)[0]["data"] == "for dora"
    # A second welcome would have come with the auth reply, before this publication.
    assert len(page.events("c", "connected")) == 1
    assert page.events("c", "error") == [] and page.events("c", "error", ch) == []


def test_get_token_is_asked_before_every_attempt(open_page: PageFactory, api: Api) -> None:
    page = open_page()
    first = connect(page, "sockjs-xhr-streaming", path="/secure",
                    tokenList=[token("carol"), token("carol-again")], **FAST)
    assert first["user"] == "carol"
    api("close", conn=first["conn"])
    assert page.wait_connected("c", 2)["user"] == "carol-again"
    assert page.snapshot("c")["tokenCalls"] == 2


# -- the script itself -----------------------------------------------------------------------


def test_pure_functions(open_page: PageFactory) -> None:
    page = open_page()
    for attempt, row in enumerate(page.call("backoffSamples", 8, 100, 2000, 50)):
        ceiling = min(2000, 100 * 2 ** (attempt + 1))
        *samples, lowest, highest = row
        assert lowest == 100 and highest == ceiling, (attempt, lowest, highest)
        assert all(100 <= s <= ceiling for s in samples), (attempt, samples)
    assert page.call("transportUrl", "http://h.example:81/live?x=1", "websocket", "a b") == (
        "ws://h.example:81/live/websocket?x=1&token=a+b")
    assert page.call("transportUrl", "https://h.example/live/", "websocket", None) == (
        "wss://h.example/live/websocket")
    assert page.call("transportUrl", "wss://h.example/live", "sockjs", "t") == "https://h.example/live?token=t"


def test_loads_as_an_es_module(open_page: PageFactory, api: Api) -> None:
    """import "/sockway.js" from a module (cross-origin, so it needs the CORS header the
    gateway sends); without SockJS on the page the helper uses native WebSocket."""
    page = open_page(load="module")
    assert page.js("typeof SockJS") == "undefined"
    connected = page.connect("c", "/live", **FAST)
    assert connected["transport"] == "websocket"
    ch = channel()
    page.subscribe("c", ch)
    api("publish", channel=ch, data="via module")
    assert page.wait_messages("c", ch, 1)[0]["data"] == "via module"
