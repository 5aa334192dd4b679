"""Webhooks end to end: a real HTTP application (an aiohttp server in the test process)
receives the gateway's events in signed batches and answers with commands (a chat
backend with no queue at all); failures (500, the application down, a timeout) are
retried with backoff and every event still arrives once and in order; a 400 is not
retried."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from realtime import KEY, Api, Closed, RawWS, SockJSWS, eventually, health, run
from support import config_gateway, free_port

SECRET = "webhook-signing-secret"


class App:
    """The application's webhook endpoint. ``behaviour(attempt, events)`` returns
    ``(status, body)`` (or sleeps first); every request is recorded."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[dict] = []
        self.behaviour: Callable[[dict, list[dict]], Awaitable[tuple[int, dict | bytes | None]]] = self.ok
        self.runner: web.AppRunner | None = None

    @staticmethod
    async def ok(request: dict, events: list[dict]) -> tuple[int, dict | None]:
        return 200, None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = {"time": time.monotonic(), "body": body, "headers": dict(request.headers),
                  "events": json.loads(body)["events"]}
        self.requests.append(record)
        status, answer = await self.behaviour(record, record["events"])
        record["status"] = status
        if isinstance(answer, bytes):
            return web.Response(body=answer, status=status, content_type="application/json")
        return web.json_response(answer or {}, status=status)

    async def start(self) -> App:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def delivered(self) -> list[dict]:
        """Events of the requests answered with a 2xx, in order."""
        return [e for r in self.requests if 200 <= r.get("status", 0) < 300 for e in r["events"]]


def _config(port: int, **webhook) -> str:
    settings = {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET, "timeout": 2.0,
                "max_retries": 8, **webhook}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[webhook]
{lines}

[[endpoint]]
prefix = "/app"
mode = "app"

[[endpoint]]
prefix = "/held"
mode = "app"
app_accept = true
auth_timeout = 3
"""


@contextlib.asynccontextmanager
async def app_server(port: int):
    app = await App(port).start()
    try:
        yield app
    finally:
        await app.stop()


def _gateway(**webhook):
    port = free_port()
    cm = config_gateway(_config(port, **webhook))
    gw = cm.__enter__()
    gw.app_port = port
    gw._cm = cm
    return gw


@pytest.fixture
def gw(request):
    webhook = getattr(request, "param", {})
    gw = _gateway(**webhook)
    yield gw
    gw._cm.__exit__(None, None, None)


def messages_of(events: list[dict]) -> list[str]:
    return [e["data"] for e in events if e["type"] == "message"]


def check_once_in_order(events: list[dict]) -> None:
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    per_conn: dict[str, list[int]] = {}
    for e in events:
        per_conn.setdefault(e["conn"], []).append(e["seq"])
    for seqs in per_conn.values():
        assert seqs == list(range(1, len(seqs) + 1)), seqs


@run(timeout=60)
async def test_batches_signature_and_chat_backend(gw):
    """A chat backend as a webhook: on open, subscribe the client to the room and
    welcome it; on message, publish it to the room. The first request is slow, so the
    events behind it pile up and come in one batch."""
    slow_first = asyncio.Event()

    async def chat(record: dict, events: list[dict]):
        if len(app.requests) == 1:
            await asyncio.sleep(0.5)
            slow_first.set()
        commands = []
        for e in events:
            if e["type"] == "open":
                commands += [{"op": "subscribe", "conn": e["conn"], "channel": "room"},
                             {"op": "send", "conn": e["conn"], "data": "welcome"}]
            elif e["type"] == "message":
                commands.append({"op": "publish", "channel": "room",
                                 "data": {"from": e["conn"], "text": e["data"]}})
        return 200, {"commands": commands}

    async with app_server(gw.app_port) as app, aiohttp.ClientSession() as http:
        app.behaviour = chat
        alice = await RawWS.connect(gw.ws_url + "/app/websocket")
        bob = await SockJSWS.connect(gw.ws_url + "/app")
        assert await alice.recv_text() == "welcome"
        assert await bob.recv_text() == "welcome"
        for i in range(5):
            await alice.send_text(f"alice {i}")
        await bob.send_text("bob 0")
        said = {"alice": [], "bob": []}
        for name, ws in (("alice", alice), ("bob", bob)):
            for _ in range(6):
                said[name].append(json.loads(await ws.recv_text())["text"])
        assert said["alice"] == said["bob"]
        assert [t for t in said["alice"] if t.startswith("alice")] == [f"alice {i}" for i in range(5)]
        await alice.close()
        await bob.close()
        await eventually(lambda: sum(e["type"] == "close" for e in app.delivered()) == 2)
        # Batches: the events that piled up behind the slow first request came together.
        assert slow_first.is_set()
        assert max(len(r["events"]) for r in app.requests) > 1
        for r in app.requests:
            assert r["headers"]["X-Sockway-Signature"] == "sha256=" + hmac.new(
                SECRET.encode(), r["body"], hashlib.sha256).hexdigest()
            assert r["headers"]["X-Sockway-Events"] == str(len(r["events"]))
            assert r["headers"]["Content-Type"].startswith("application/json")
        check_once_in_order(app.delivered())
        assert sorted(messages_of(app.delivered())) == sorted([f"alice {i}" for i in range(5)] + ["bob 0"])
        assert (await health(http, gw))["status"] == "ok"


@run(timeout=60)
async def test_retries_after_500(gw):
    async def flaky(record: dict, events: list[dict]):
        # Every batch fails twice before it is taken.
        body = record["body"]
        attempts = sum(r["body"] == body for r in app.requests)
        return (500, None) if attempts <= 2 else (200, None)

    async with app_server(gw.app_port) as app:
        app.behaviour = flaky
        ws = await RawWS.connect(gw.ws_url + "/app/websocket")
        for i in range(10):
            await ws.send_text(f"m{i}")
            await asyncio.sleep(0.02)
        await ws.close()
        await eventually(lambda: any(e["type"] == "close" for e in app.delivered()), timeout=20)
        delivered = app.delivered()
        check_once_in_order(delivered)
        assert messages_of(delivered) == [f"m{i}" for i in range(10)]
        # Each body was sent three times, 0.2 s then 0.4 s apart (backoff).
        bodies: dict[bytes, list[float]] = {}
        for r in app.requests:
            bodies.setdefault(r["body"], []).append(r["time"])
        for times in bodies.values():
            assert len(times) == 3
            assert times[1] - times[0] >= 0.15 and times[2] - times[1] >= 0.35, times
        async with aiohttp.ClientSession() as http:
            stats = await Api(http, gw).stats()
            assert stats["events"]["outputs"]["webhook"]["queued"] == 0


async def _failing_three_times(gw, done) -> tuple[App, list[dict]]:
    """Each batch fails 3 times (500) before it is taken; returns the app and what it
    took once ``done(app, stats)`` (the webhook output's stats) holds, within 10 s."""
    async def flaky(record: dict, events: list[dict]):
        attempts = sum(r["body"] == record["body"] for r in app.requests)
        return (500, None) if attempts <= 3 else (200, None)

    async with app_server(gw.app_port) as app, aiohttp.ClientSession() as http:
        app.behaviour = flaky
        ws = await RawWS.connect(gw.ws_url + "/app/websocket")
        await ws.send_text("one")
        await ws.close()

        async def finished() -> bool:
            return done(app, (await Api(http, gw).stats())["events"]["outputs"]["webhook"])

        await eventually(finished, timeout=10)  # 0.2 + 0.4 + 0.8 s of backoff per batch
        return app, app.delivered()


@pytest.mark.parametrize("gw", [{"max_retries": 1}], indirect=True)
@run(timeout=60)
async def test_a_batch_is_dropped_after_max_retries(gw):
    app, delivered = await _failing_three_times(gw, lambda app, out: out["failed"] == 3)
    assert delivered == []
    assert len({r["body"] for r in app.requests}) >= 1 and len(app.requests) >= 2
    async with aiohttp.ClientSession() as http:
        stats = await Api(http, gw).stats()
    assert stats["events"]["outputs"]["webhook"]["failed"] == 3, stats["events"]  # open, message, close


@pytest.mark.parametrize("gw", [{"max_retries": -1}], indirect=True)
@run(timeout=60)
async def test_max_retries_minus_one_retries_until_delivered(gw):
    app, delivered = await _failing_three_times(
        gw, lambda app, out: any(e["type"] == "close" for e in app.delivered()))
    assert messages_of(delivered) == ["one"]
    assert [e["type"] for e in delivered] == ["open", "message", "close"]
    taken = [r for r in app.requests if r.get("status") == 200]
    assert all(sum(r["body"] == t["body"] for r in app.requests) == 4 for t in taken)  # 3 failures, then taken
    async with aiohttp.ClientSession() as http:
        stats = await Api(http, gw).stats()
    assert stats["events"]["outputs"]["webhook"]["failed"] == 0, stats["events"]


def test_bad_retry_setting_is_refused():
    from sockway.config import ConfigError, WebhookConfig

    with pytest.raises(ConfigError, match="max_retries must be -1"):
        WebhookConfig(url="http://x", max_retries=-2)


@run(timeout=60)
async def test_application_down_then_up(gw):
    ws = await RawWS.connect(gw.ws_url + "/app/websocket")
    for i in range(5):
        await ws.send_text(f"while down {i}")
    await asyncio.sleep(1.0)  # a few failed attempts
    async with app_server(gw.app_port) as app:
        for i in range(3):
            await ws.send_text(f"after {i}")
        await ws.close()
        await eventually(lambda: any(e["type"] == "close" for e in app.delivered()), timeout=20)
        delivered = app.delivered()
        check_once_in_order(delivered)
        assert messages_of(delivered) == [f"while down {i}" for i in range(5)] + [f"after {i}" for i in range(3)]
        assert delivered[0]["type"] == "open"


@run(timeout=60)
async def test_client_error_not_retried(gw):
    async def picky(record: dict, events: list[dict]):
        if any(e.get("data") == "poison" for e in events):
            return 400, {"error": "no"}
        return 200, None

    async with app_server(gw.app_port) as app:
        app.behaviour = picky
        ws = await RawWS.connect(gw.ws_url + "/app/websocket")
        await eventually(lambda: app.delivered())
        await ws.send_text("poison")
        await eventually(lambda: any(r.get("status") == 400 for r in app.requests))
        # Batches go out one after the other, a retry before the next batch: once the
        # batches sent after it (the marker) are taken, a retry would have been seen.
        await ws.send_text("fine")
        await ws.close()
        await eventually(lambda: any(e["type"] == "close" for e in app.delivered()))
        poisoned = [r for r in app.requests if any(e.get("data") == "poison" for e in r["events"])]
        assert len(poisoned) == 1
        assert "fine" in messages_of(app.delivered())


@pytest.mark.parametrize("gw", [{"timeout": 0.5}], indirect=True)
@run(timeout=60)
async def test_timeout_is_retried(gw):
    async def slow_once(record: dict, events: list[dict]):
        if len(app.requests) == 1:
            await asyncio.sleep(1.5)
        return 200, None

    async with app_server(gw.app_port) as app:
        app.behaviour = slow_once
        started = time.monotonic()
        ws = await RawWS.connect(gw.ws_url + "/app/websocket")
        await ws.send_text("patience")
        await ws.close()
        await eventually(lambda: any(e["type"] == "close" for e in app.delivered()), timeout=15)
        # The first attempt timed out after 0.5 s; the retry came before the slow
        # answer would have.
        assert app.requests[1]["time"] - app.requests[0]["time"] < 1.4
        assert app.requests[1]["body"] == app.requests[0]["body"]
        assert time.monotonic() - started < 10
        # At least once: the application saw the first batch twice (it timed out on
        # the gateway's side) and can drop the duplicate by event id.
        seen: dict[str, dict] = {}
        for e in (e for r in app.requests for e in r["events"]):
            seen.setdefault(e["id"], e)
        assert messages_of(list(seen.values())) == ["patience"]


@run(timeout=60)
async def test_webhook_accepts_held_connections(gw):
    """app_accept with no queue at all: the webhook's answer to the open event accepts
    the connection (or closes it), and the messages sent meanwhile follow."""

    async def gatekeeper(record: dict, events: list[dict]):
        commands = []
        for e in events:
            if e["type"] == "open" and e["endpoint"] == "/held":
                if "user=mallory" in e["request"]["query"]:
                    commands.append({"op": "close", "conn": e["conn"], "code": 4003, "reason": "no"})
                else:
                    user = e["request"]["query"].partition("user=")[2]
                    commands += [{"op": "accept", "conn": e["conn"], "user": user},
                                 {"op": "send", "conn": e["conn"], "data": f"welcome {user}"}]
        return 200, {"commands": commands}

    async with app_server(gw.app_port) as app:
        app.behaviour = gatekeeper
        ws = await RawWS.connect(gw.ws_url + "/held/websocket?user=ann")
        await ws.send_text("sent before being accepted")
        assert await ws.recv_text() == "welcome ann"
        await ws.send_text("after")
        refused = await RawWS.connect(gw.ws_url + "/held/websocket?user=mallory")
        with pytest.raises(Closed) as closed:
            await refused.recv_text()
        assert (closed.value.code, closed.value.reason) == (4003, "no")
        await ws.close()
        await eventually(lambda: sum(e["type"] == "close" for e in app.delivered()) == 2)
        ann = [e for e in app.delivered() if e["conn"] == app.delivered()[0]["conn"]]
        assert [(e["type"], e.get("data"), e.get("user")) for e in ann] == [
            ("open", None, None), ("message", "sent before being accepted", "ann"),
            ("message", "after", "ann"), ("close", None, "ann")]



@run(timeout=60)
async def test_deeply_nested_response_does_not_stop_webhooks(gw):
    """A response body nested too deeply to parse is ignored like any body that is not
    JSON; the next events are still delivered."""

    async def nested_once(record: dict, events: list[dict]):
        if len(app.requests) == 1:
            return 200, b'{"commands":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        return 200, None

    async with app_server(gw.app_port) as app:
        app.behaviour = nested_once
        ws = await RawWS.connect(gw.ws_url + "/app/websocket")
        await eventually(lambda: app.requests)
        await ws.send_text("after the bad answer")
        await ws.close()
        await eventually(lambda: "after the bad answer" in messages_of(app.delivered()), timeout=4)
