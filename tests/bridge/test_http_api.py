"""The HTTP API's contract: exact status codes and JSON errors for every way a request
can be wrong (401 without the key, 400 bad JSON or fields, 404 unknown connection or
event, 413 too large, 409 presence off), large bodies read whole, and the OpenAPI
description listing every route the server answers."""

from __future__ import annotations

import json
import socket

import aiohttp
import pytest

from realtime import KEY, Api, ChannelsClient, health, run
from support import config_gateway, drain

ROUTES = ["publish", "broadcast", "send", "subscribe", "unsubscribe", "close", "presence",
          "history", "accept", "reply", "commands"]


@pytest.fixture(scope="module")
def gw():
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[endpoint]]
prefix = "/bc"
mode = "broadcast"

[[namespace]]
name = ""
history_size = 10
presence = true

[[namespace]]
name = "nopres"
"""
    with config_gateway(config) as proc:
        yield proc


def assert_error(status: int, body, expected_status: int, code: str | None = None) -> None:
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body


@run()
async def test_unauthorized(gw):
    async with aiohttp.ClientSession() as http:
        for key in (None, "wrong", "", KEY + "x"):
            api = Api(http, gw, key)
            for route in ROUTES:
                status, body = await api.post(route, {"channel": "x", "data": 1})
                assert_error(status, body, 401, "unauthorized")
            for path in ("/api/stats", "/api/presence?channel=x", "/api/history?channel=x"):
                status, body = await api.get(path)
                assert_error(status, body, 401, "unauthorized")
        async with http.post(gw.url + "/api/publish", data=b"{}") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        # The X-API-Key header works as well as the bearer token.
        status, body = await Api(http, gw, None).raw(
            "POST", "/api/publish", json.dumps({"channel": "k", "data": 1}).encode(), {"X-API-Key": KEY})
        assert status == 200 and body["result"]["channel"] == "k"
        # Some other scheme is not the key.
        status, body = await Api(http, gw, None).raw("GET", "/api/stats", None,
                                                     {"Authorization": f"Basic {KEY}"})
        assert_error(status, body, 401)


@run()
async def test_bad_requests(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        for route in ROUTES:
            for raw in (b"", b"{", b"not json", b"\xff\xfe", b'{"a": 1,}', b"[1,"):
                status, body = await api.raw("POST", f"/api/{route}", raw)
                assert_error(status, body, 400, "bad_request")
        for route in [r for r in ROUTES if r != "commands"]:
            for body_value in ([], [1], "s", 5, None, True):
                status, body = await api.post(route, body_value)
                assert_error(status, body, 400, "bad_request")
        status, body = await api.post("commands", {"op": "stats"})
        assert_error(status, body, 400, "bad_request")
        cases = [
            ("publish", {"data": 1}, "bad_request"),
            ("publish", {"channel": "x"}, "bad_request"),
            ("publish", {"channel": 5, "data": 1}, "bad_request"),
            ("publish", {"channel": "a b", "data": 1}, "bad_channel"),
            ("publish", {"channel": "", "data": 1}, "bad_channel"),
            ("publish", {"channel": "x" * 256, "data": 1}, "bad_channel"),
            ("publish", {"channel": "news\n", "data": 1}, "bad_channel"),
            # Every field is checked before the connection is looked up.
            ("subscribe", {"conn": "c", "channel": "news\n"}, "bad_channel"),
            ("publish", {"op": "send", "channel": "x", "data": 1}, "bad_request"),
            ("broadcast", {"data": 1}, "bad_request"),
            ("send", {"data": 1}, "bad_request"),
            ("send", {"conn": 5, "data": 1}, "bad_request"),
            ("subscribe", {"conn": 5, "channel": "x"}, "bad_request"),
            ("close", {"conn": None}, "bad_request"),
            ("history", {"channel": "x", "limit": -1}, "bad_request"),
            ("history", {"channel": "x", "limit": "3"}, "bad_request"),
            ("history", {"channel": "x", "limit": True}, "bad_request"),
            ("history", {"channel": "x", "since": {"offset": 1}}, "bad_request"),
            ("history", {"channel": "x", "since": "0"}, "bad_request"),
            ("reply", {"event": "e"}, "bad_request"),
            ("reply", {"event": "e", "allow": "yes"}, "bad_request"),
            ("reply", {"event": 5, "allow": True}, "bad_request"),
            ("reply", {"event": "e", "allow": True, "reason": 5}, "bad_request"),
            ("accept", {}, "bad_request"),
        ]
        for route, payload, code in cases:
            status, body = await api.post(route, payload)
            assert_error(status, body, 400, code)
        for query in ("channel=x&limit=abc", "channel=x&limit=-2", "channel=a%20b", "channel=news%0A", ""):
            status, body = await api.get(f"/api/history?{query}")
            assert_error(status, body, 400)
        assert (await health(http, gw))["status"] == "ok"


@run()
async def test_close_command_checks(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        c = await ChannelsClient.connect(gw, "/ch")
        for code in (999, 1005, 1006, 1015, 2000, 2999, 5000, "4000", True, 4000.5, None):
            status, body = await api.post("close", {"conn": c.conn, "code": code})
            assert_error(status, body, 400, "bad_request")
        for reason in (5, "x" * 124, "é" * 62):
            status, body = await api.post("close", {"conn": c.conn, "reason": reason})
            assert_error(status, body, 400, "bad_request")
        assert await api("close", conn=c.conn, code=1000, reason="é" * 61) == {"conn": c.conn, "code": 1000}
        closed = await c.closed()
        assert (closed.code, closed.reason) == (1000, "é" * 61)


@run()
async def test_not_found_and_conflict(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        for route, payload in [("send", {"conn": "nope", "data": 1}),
                               ("subscribe", {"conn": "nope", "channel": "x"}),
                               ("unsubscribe", {"conn": "nope", "channel": "x"}),
                               ("close", {"conn": "nope"}),
                               ("accept", {"conn": "nope"}),
                               ("reply", {"event": "nope", "allow": True}),
                               ("broadcast", {"endpoint": "/nowhere", "data": 1}),
                               ("broadcast", {"endpoint": "/ch", "data": 1})]:
            status, body = await api.post(route, payload)
            assert_error(status, body, 404, "not_found")
        status, body = await api.post("presence", {"channel": "nopres:x"})
        assert_error(status, body, 409, "not_enabled")
        status, body = await api.get("/api/presence?channel=nopres:x")
        assert_error(status, body, 409, "not_enabled")
        # Anything else under /api/ is a JSON error too, not the web server's text page.
        for path in ("/api/nothing-here", "/api/", "/api/publish/extra"):
            for method in ("GET", "POST", "DELETE"):
                status, body = await api.raw(method, path, b"{}")
                assert_error(status, body, 404, "not_found")
        for method, path, allow in [("GET", "/api/publish", "POST"), ("PUT", "/api/commands", "POST"),
                                    ("POST", "/api/stats", "GET, HEAD"), ("DELETE", "/api/history", "GET, HEAD")]:
            async with http.request(method, gw.url + path, headers=api.headers()) as r:
                assert r.status == 405 and r.headers["Allow"] == allow, (method, path, r.status)
                assert_error(r.status, await r.json(), 405, "method_not_allowed")


@run(timeout=60)
async def test_sizes(gw):
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        # Large bodies are read whole, however they arrive.
        big = "é" * 300_000  # 600 KB of UTF-8
        status, body = await api.post("publish", {"channel": "big", "data": big})
        assert status == 200, body
        history = await api("history", channel="big", limit=1)
        assert history["publications"][0]["data"] == big

        async def chunked():
            payload = json.dumps({"channel": "big", "data": "x" * 900_000}).encode()
            for i in range(0, len(payload), 7000):
                yield payload[i:i + 7000]

        status, body = await api.raw("POST", "/api/publish", chunked())
        assert status == 200, body
        # Over the data limit (1 MiB): 413.
        status, body = await api.post("publish", {"channel": "big", "data": "x" * (1 << 20) + "x"})
        assert_error(status, body, 413, "too_large")
        client = await ChannelsClient.connect(gw, "/ch")
        status, body = await api.post("send", {"conn": client.conn, "data": "x" * (1 << 20) + "x"})
        assert_error(status, body, 413, "too_large")
        await client.close()
        # The connection is looked up first: an unknown one is 404, whatever the data.
        status, body = await api.post("send", {"conn": "nope", "data": "x" * (1 << 20) + "x"})
        assert_error(status, body, 404, "not_found")
        # Over the body limit (4 MiB), with a Content-Length and without one.
        huge = json.dumps({"channel": "big", "data": "x" * (5 << 20)}).encode()
        status, body = await api.raw("POST", "/api/publish", huge)
        assert_error(status, body, 413, "too_large")

        async def huge_chunked():
            for i in range(0, len(huge), 1 << 16):
                yield huge[i:i + (1 << 16)]

        status, body = await api.raw("POST", "/api/publish", huge_chunked())
        assert_error(status, body, 413, "too_large")
        status, body = await api.post("commands", [{"op": "stats"}] * 1001)
        assert_error(status, body, 413, "too_large")
        status, body = await api.post("commands", [{"op": "publish", "channel": "c", "data": i}
                                                   for i in range(1000)])
        assert status == 200 and len(body["results"]) == 1000
        assert (await health(http, gw))["status"] == "ok"


@run()
async def test_openapi_lists_every_route(gw):
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/api/openapi.json") as r:
        assert r.status == 200 and r.content_type == "application/json"
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for route in ROUTES:
        assert "post" in paths[f"/api/{route}"], route
    assert "get" in paths["/api/stats"]
    assert "get" in paths["/api/presence"] and "get" in paths["/api/history"]
    # Every documented operation is served by its handler (not a 404 or 405 from the
    # router): an empty request is its 400 naming what is missing, /api/stats its 200.
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw)
        for path, methods in paths.items():
            for method in methods:
                status, body = await api.raw(method.upper(), path, b"{}" if method == "post" else None)
                if path == "/api/stats":
                    assert status == 200 and set(body) == {"result"}, (method, path, status, body)
                else:
                    assert_error(status, body, 400, "bad_request")


def _raw_request(port: int, head: bytes) -> tuple[int, dict]:
    """Send ``head`` (a request with no body, ``Connection: close``) as bytes, so that
    header values need not be UTF-8; the status and the JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        answer = drain(sock, 5)
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


def test_a_key_header_that_is_not_utf8_is_a_wrong_key(gw):
    """X-API-Key and Authorization values with bytes that are not UTF-8 (or that encode
    a lone surrogate) are wrong keys: 401 with the JSON error, no traceback."""
    values = [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", KEY.encode() + b"\xff", b"\x80" + KEY.encode()]
    for value in values:
        for header in (b"X-API-Key: " + value, b"Authorization: Bearer " + value,
                       b"Authorization: " + value + b" " + KEY.encode()):
            for method, path in ((b"GET", b"/api/stats"), (b"POST", b"/api/publish")):
                head = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + header
                        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                status, body = _raw_request(gw.port, head)
                assert_error(status, body, 401, "unauthorized")
    status, body = _raw_request(gw.port, b"GET /api/stats HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                                + b"\r\nConnection: close\r\n\r\n")
    assert status == 200 and "connections" in body["result"]
    output = gw.output()
    assert "Traceback" not in output and " ERROR " not in output, output[-3000:]


AGREEMENT_CASES = {
    "publish": [{"channel": "x", "data": 1}, {"channel": "x", "data": None}, {"channel": "x"},
                {"channel": "x", "data": 1, "extra": 1}, {"channel": "x", "data": 1, "Channel": "y"},
                {"channel": "", "data": 1}, {"channel": "x" * 255, "data": 1}, {"channel": "x" * 256, "data": 1},
                {"channel": "news\n", "data": 1}, {"channel": "a b", "data": 1}, {"channel": 5, "data": 1},
                {"channel": "x", "data": 1, "op": "publish"}, {"channel": "x", "data": 1, "op": "send"}],
    "broadcast": [{"endpoint": "/nowhere", "data": 1}, {"endpoint": "nowhere", "data": 1},
                  {"endpoint": "/nowhere", "data": 1, "channel": "x"}],
    "send": [{"conn": "nope", "data": 1}, {"conn": "", "data": 1}, {"conn": "nope", "data": 1, "code": 1000}],
    "subscribe": [{"conn": "nope", "channel": "x"}, {"conn": "nope", "channel": "x", "since": None},
                  {"conn": "nope", "channel": "x", "since": {"offset": 1, "epoch": "e"}},
                  {"conn": "nope", "channel": "x", "since": {"offset": 1, "epoch": "e", "more": 1}},
                  {"conn": "nope", "channel": "x", "since": {"offset": 1.5, "epoch": "e"}},
                  {"conn": "nope", "channel": "x", "sinse": {"offset": 1, "epoch": "e"}}],
    "unsubscribe": [{"conn": "nope", "channel": "x"}, {"conn": "nope", "channel": "x", "since": None}],
    "close": [{"conn": "nope", "code": code} for code in
              (999, 1000, 1001, 1002, 1005, 1011, 2000, 2999, 3000, 4000, 4999, 5000, 4000.5, True, "4000")]
             + [{"conn": "nope", "reason": "x" * 123}, {"conn": "nope", "reason": "x" * 124},
                {"conn": "nope", "reason": None}, {"conn": "nope", "why": "x"}],
    "presence": [{"channel": "x"}, {"channel": "x", "limit": 1}],
    "history": [{"channel": "x", "limit": limit} for limit in (0, 5, -1, None, 1.5, "3", True)]
               + [{"channel": "x", "since": {"epoch": "e"}}, {"channel": "x", "last": 3}],
    "accept": [{"conn": "nope"}, {"conn": "nope", "user": None, "info": None}, {"conn": "nope", "user": 5},
               {"conn": "nope", "info": {"a": 1}}, {"conn": "nope", "info": [1]}, {"conn": "nope", "users": "a"}],
    "reply": [{"event": "nope", "allow": True}, {"event": "nope", "allow": 1}, {"event": "", "allow": True},
              {"event": "nope", "allow": False, "reason": "no"}, {"event": "nope", "allow": True, "extra": 0}],
}


@run()
async def test_the_openapi_document_and_the_validation_agree(gw):
    """Each body is refused with 400 exactly when the OpenAPI document's schema for its
    route refuses it: unknown fields, close codes, lengths, types. Valid bodies then
    fail for what they name (no such connection: 404), or run. Two rules JSON Schema
    cannot say are checked after it: a close reason's limit counts UTF-8 bytes, not
    characters (test_close_command_checks), and an integer is written as one: JSON
    Schema's "integer" admits 4000.0, sockway does not (docs/bridge.md)."""
    import jsonschema_rs

    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/api/openapi.json") as r:
            doc = await r.json()
        api = Api(http, gw)
        disagreements = []
        for route, bodies in AGREEMENT_CASES.items():
            schema = doc["paths"][f"/api/{route}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            validator = jsonschema_rs.validator_for({**schema, "components": doc["components"]})
            for body in bodies:
                status, answer = await api.post(route, body)
                if (status == 400) == validator.is_valid(body):
                    disagreements.append((route, body, status, answer))
        assert not disagreements, "\n".join(map(repr, disagreements))
        # The refusals say which field and what is expected.
        status, body = await api.post("publish", {"channel": "x", "data": 1, "chanel": "y"})
        assert_error(status, body, 400, "bad_request")
        assert body["error"]["message"] == "unknown field 'chanel': publish takes channel, data"
        status, body = await api.post("close", {"conn": "c", "code": 2000})
        assert body["error"]["message"] == "'code' must be 1000, 1001 or 3000-4999"
        status, body = await api.post("history", {"channel": "x", "limit": -1})
        assert body["error"]["message"].startswith("'limit' must be a non-negative integer")
        status, body = await api.post("subscribe", {"channel": "x"})
        assert body["error"]["message"] == "'conn' is required (a connection id (from an event))"
        for route, body in (("close", {"conn": "nope", "code": 4000.0}), ("history", {"channel": "x", "limit": 1.0})):
            status, answer = await api.post(route, body)
            assert_error(status, answer, 400, "bad_request")
        # The same checks whichever way a command comes: in a batch too.
        status, body = await api.post("commands", [{"op": "stats", "verbose": True},
                                                   {"op": "publish", "channel": "x", "data": 1, "id": 7}])
        assert status == 200, body
        assert [r["error"]["message"] for r in body["results"]] == [
            "unknown field 'verbose': stats takes no other field",
            "unknown field 'id': publish takes channel, data"], body
