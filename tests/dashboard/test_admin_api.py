"""The admin API and the health endpoints of a real gateway: /healthz and /readyz (also
with an unreachable broker), the key (three ways to send it, 401 without it, 404 with
a message when no key is configured), the dashboard page itself (self-contained), and
what stats, connections, channels, channel and the events stream answer."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import uuid

import aiohttp
import pytest
import websockets
from dashboard_support import API_KEY, T, admin, api_command, http, token

from support import config_gateway, drain, free_port

pytestmark = pytest.mark.timeout(60)

PROTECTED = ["/admin/api/stats", "/admin/api/connections", "/admin/api/channels", "/admin/api/channel?name=news",
             "/admin/api/trace", "/admin/api/events"]


def test_health_endpoints(gw):
    status, headers, body = http(gw.url + "/healthz")
    health = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert health["status"] == "ok" and health["uptime"] > 0
    status, _, body = http(gw.url + "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "broker": "memory"}


def test_readyz_with_an_unreachable_broker():
    """Redis down: the node serves (healthz 200) but is not ready (readyz 503); the
    metrics and the stats say so too."""
    config = f'[broker]\nurl = "redis://127.0.0.1:{free_port()}"\n[api]\nkey = "{API_KEY}"\n' \
             '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n'
    with config_gateway(config) as down:
        assert http(down.url + "/healthz")[0] == 200
        status, _, body = http(down.url + "/readyz")
        assert status == 503 and json.loads(body) == {"ready": False, "broker": "redis"}
        assert b'sockway_broker_up{engine="redis"} 0.0' in http(down.url + "/metrics")[2]
        stats = admin(down.url, "/admin/api/stats")[1]["result"]
        assert stats["broker"]["engine"] == "redis" and stats["broker"]["ready"] is False


def test_the_key_is_required(gw):
    for path in PROTECTED:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            status, _, body = http(gw.url + path, headers)
            assert status == 401, (path, headers)
            assert json.loads(body)["error"]["code"] == "unauthorized"
        status, _, _ = http(gw.url + path + ("&" if "?" in path else "?") + "key=wrong")
        assert status == 401, path
    for headers, query in (({"X-API-Key": API_KEY}, ""), ({"Authorization": f"Bearer {API_KEY}"}, ""),
                           ({}, f"?key={API_KEY}")):
        status, _, body = http(gw.url + "/admin/api/stats" + query, headers)
        assert status == 200, headers
        assert "connections" in json.loads(body)["result"]

    async def handshake(path: str, **query) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(gw.ws_url + path, params=query):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    for path in ("/admin/api/trace", "/admin/api/events"):
        assert asyncio.run(handshake(path)) == 401
        assert asyncio.run(handshake(path, key="wrong")) == 401
        assert asyncio.run(handshake(path, key=API_KEY)) == 101


def test_open_endpoints_need_no_key(gw):
    assert http(gw.url + "/metrics")[0] == 200
    assert http(gw.url + "/healthz")[0] == 200
    status, headers, _ = http(gw.url + "/admin/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")


def test_admin_api_off_without_a_key():
    with config_gateway('[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n') as plain:
        for path in PROTECTED:
            status, _, body = http(plain.url + path, {"X-API-Key": "anything"})
            error = json.loads(body)["error"]
            assert status == 404 and error["code"] == "not_enabled", path
            assert error["message"] == "the admin API needs an API key: set [api] key (or SOCKWAY_API_KEY)"
        assert http(plain.url + "/metrics")[0] == 200
        assert http(plain.url + "/healthz")[0] == 200
        assert http(plain.url + "/admin/")[0] == 200  # the page explains it


def test_dashboard_page_is_self_contained(gw):
    status, headers, body = http(gw.url + "/admin/")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    page = body.decode()
    assert page.startswith("<!doctype html>")
    # No external resource: nothing loaded by URL but the page's own API.
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", page), "the page loads a resource"
    assert not re.search(r"url\(|@import|<link[^>]+stylesheet|<script[^>]+src", page)
    assert not re.search(r"https?://", page)
    # /admin goes to /admin/
    status, headers, _ = http(gw.url + "/admin")
    assert status == 200 and "sockway dashboard" in _.decode()


def test_connections_channels_and_channel(gw):
    channel = f"room{uuid.uuid4().hex[:8]}"

    async def main():
        async with (
            # Unbounded queues: the 25 publications stay unread, the closing handshake must not wait.
            websockets.connect(gw.ws_url + "/live/websocket?token=" + token("dora"), open_timeout=T,
                               max_queue=None) as dora,
            websockets.connect(gw.ws_url + "/live/websocket", open_timeout=T, max_queue=None) as anon,
            websockets.connect(gw.ws_url + "/other/websocket", open_timeout=T),
        ):
            ids = []
            for ws in (dora, anon):
                ids.append(json.loads(await asyncio.wait_for(ws.recv(), T))["conn"])
                await ws.send(json.dumps({"op": "subscribe", "channel": channel, "id": 1}))
                assert json.loads(await asyncio.wait_for(ws.recv(), T))["type"] == "reply"
            for i in range(25):
                assert (await asyncio.to_thread(api_command, gw.url, "publish",
                                                {"channel": channel, "data": {"i": i}}))[0] == 200
            return ids, await asyncio.to_thread(lambda: {
                "all": admin(gw.url, "/admin/api/connections"),
                "dora": admin(gw.url, "/admin/api/connections", q="DORA"),
                "other": admin(gw.url, "/admin/api/connections", endpoint="/other"),
                "limited": admin(gw.url, "/admin/api/connections", limit=1),
                "bad": admin(gw.url, "/admin/api/connections", limit="x"),
                "channels": admin(gw.url, "/admin/api/channels"),
                "channel": admin(gw.url, "/admin/api/channel", name=channel),
                "last5": admin(gw.url, "/admin/api/channel", name=channel, limit=5),
                "quiet": admin(gw.url, "/admin/api/channel", name="quiet:nothing"),
                "badname": admin(gw.url, "/admin/api/channel", name="no spaces"),
                "noname": admin(gw.url, "/admin/api/channel"),
            })

    (dora_id, anon_id), answers = asyncio.run(main())

    status, body = answers["all"]
    assert status == 200 and body["result"]["total"] == 3
    entry = next(c for c in body["result"]["connections"] if c["conn"] == dora_id)
    assert entry["endpoint"] == "/live" and entry["transport"] == "websocket" and entry["user"] == "dora"
    assert entry["channels"] == [channel] and entry["remote"] == "127.0.0.1" and entry["age"] >= 0
    assert [c["conn"] for c in answers["dora"][1]["result"]["connections"]] == [dora_id]
    assert [c["endpoint"] for c in answers["other"][1]["result"]["connections"]] == ["/other"]
    limited = answers["limited"][1]["result"]
    assert len(limited["connections"]) == 1 and limited["total"] == 3
    assert answers["bad"][0] == 400

    listed = [c for c in answers["channels"][1]["result"]["channels"] if c["channel"] == channel]
    assert listed == [{"channel": channel, "subscribers": 2, "namespace": "", "history_size": 50, "presence": True}]

    status, body = answers["channel"]
    info = body["result"]
    assert status == 200 and info["channel"] == channel and info["namespace"] == "" and info["history_size"] == 50
    assert sorted(s["conn"] for s in info["subscribers"]) == sorted([dora_id, anon_id])
    assert {s["user"] for s in info["subscribers"]} == {"dora", None}
    assert set(info["presence"]) == {dora_id, anon_id} and info["presence"][dora_id]["user"] == "dora"
    assert info["history"]["offset"] == 25
    assert [p["data"] for p in info["history"]["publications"]] == [{"i": i} for i in range(5, 25)]  # the last 20
    assert [p["data"] for p in answers["last5"][1]["result"]["history"]["publications"]] == [
        {"i": i} for i in range(20, 25)]

    quiet = answers["quiet"][1]["result"]
    assert answers["quiet"][0] == 200 and quiet["subscribers"] == [] and quiet["presence"] is None
    assert quiet["history_size"] == 0 and quiet["history"]["publications"] == []
    assert answers["badname"][0] == 400 and answers["badname"][1]["error"]["code"] == "bad_channel"
    assert answers["noname"][0] == 400


def test_stats(gw):
    async def main():
        async with websockets.connect(gw.ws_url + "/echo/websocket", open_timeout=T) as ws:
            await ws.send("x" * 10)
            await asyncio.wait_for(ws.recv(), T)
            return await asyncio.to_thread(admin, gw.url, "/admin/api/stats")

    before = admin(gw.url, "/admin/api/stats")[1]["result"]
    status, body = asyncio.run(main())
    stats = body["result"]
    assert status == 200 and stats["node"] == before["node"] and stats["time"] > before["time"]
    echo, echo_before = stats["endpoints"]["/echo"], before["endpoints"]["/echo"]
    assert echo["mode"] == "echo" and echo["connections"] == 1 and echo["transports"] == {"websocket": 1}
    assert echo["messages_in"] == echo_before["messages_in"] + 1
    assert echo["bytes_in"] > echo_before["bytes_in"] and echo["bytes_out"] > echo_before["bytes_out"]
    assert echo["opened"] == echo_before["opened"] + 1
    for key in ("channels", "events", "commands", "broker", "coalescer", "slow_consumers", "rate_limited",
                "auth_failures", "rejected_connections", "uptime", "trace_watchers"):
        assert key in stats, key


def test_events_stream(gw):
    """The application events as emitted (channels mode: open and close), filtered by
    endpoint and type."""
    async def main():
        url = gw.ws_url + "/admin/api/events"
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url, params={"key": API_KEY, "endpoint": "/live", "type": "open"}) as events,
        ):
            assert (await events.receive_json(timeout=T)) == {"type": "events"}
            async with websockets.connect(gw.ws_url + "/live/websocket?token=" + token("erin"), open_timeout=T) as ws:
                conn = json.loads(await asyncio.wait_for(ws.recv(), T))["conn"]
            async with websockets.connect(gw.ws_url + "/other/websocket", open_timeout=T):
                pass
            batch = await events.receive_json(timeout=T)
            return conn, batch

    conn, batch = asyncio.run(main())
    assert batch["type"] == "batch" and batch["dropped"] == 0
    [event] = batch["items"]
    assert event["type"] == "open" and event["conn"] == conn and event["endpoint"] == "/live"
    assert event["user"] == "erin"


def test_a_key_header_that_is_not_utf8_is_a_wrong_key(gw):
    """X-API-Key and Authorization values that are not UTF-8: 401 with the JSON error on
    every protected path (the trace and events WebSockets too), no traceback."""
    for value in (b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", API_KEY.encode() + b"\xff"):
        for header in (b"X-API-Key: " + value, b"Authorization: Bearer " + value):
            for path in PROTECTED:
                head = (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header
                        + b"\r\nConnection: close\r\n\r\n")
                with socket.create_connection(("127.0.0.1", gw.port), timeout=T) as sock:
                    sock.sendall(head)
                    answer = drain(sock, T)
                assert answer.startswith(b"HTTP/1.1 401 "), (path, header, answer[:200])
                body = json.loads(answer.partition(b"\r\n\r\n")[2])
                assert body["error"]["code"] == "unauthorized", body
    output = gw.output()
    assert "Traceback" not in output and " ERROR " not in output, output[-3000:]
