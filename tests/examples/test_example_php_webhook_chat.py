"""examples/php/webhook-chat: the PHP built-in server running index.php as the whole
backend of a chat, behind a real gateway running the example's own sockway.toml (ports
and secret from the environment). Clients: a raw WebSocket and a SockJS-over-WebSocket
session on /chat."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from example_support import (
    EXAMPLES,
    Program,
    SockJSClient,
    WsClient,
    program,
    wait_http,
)
from websockets.exceptions import ConnectionClosed

from sockway.bridge.webhooks import sign
from support import GatewayProcess, free_port, gateway, require_program

CHAT = EXAMPLES / "php" / "webhook-chat"


@dataclass
class Backend:
    url: str
    secret: str
    proc: Program


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    php = require_program("php", "apt-get install php-cli")  # the chat needs no extension
    url = f"http://127.0.0.1:{free_port()}/"
    secret = secrets.token_hex(16)
    host = url.removeprefix("http://").rstrip("/")
    with program([php, "-S", host, "index.php"], env={"SOCKWAY_WEBHOOK_SECRET": secret}, cwd=CHAT) as proc:
        wait_http(url)
        yield Backend(url, secret, proc)


@contextlib.contextmanager
def chat_gateway(backend: Backend, secret: str, api_key: str = "") -> Iterator[GatewayProcess]:
    env = {"SOCKWAY_WEBHOOK_URL": backend.url, "SOCKWAY_WEBHOOK_SECRET": secret}
    if api_key:
        env["SOCKWAY_API_KEY"] = api_key
    with gateway(["serve", "--config", str(CHAT / "sockway.toml")], env=env) as proc:
        yield proc


def next_of(client: WsClient, kind: str) -> tuple[dict, list[dict]]:
    """The next message of type ``kind`` (JSON), and those received before it."""
    message, before = client.until(lambda m: json.loads(m).get("type") == kind)
    return json.loads(message), [json.loads(m) for m in before]


def test_two_clients_chat(backend):
    with chat_gateway(backend, backend.secret) as gw, \
            WsClient(gw.ws_url + "/chat/websocket?name=alice") as alice:
        welcome = json.loads(alice.recv())
        assert welcome["type"] == "welcome" and welcome["user"] == "alice"
        assert welcome["text"].startswith("Welcome, alice!")

        with SockJSClient(gw.ws_url, "/chat", "?name=bob") as bob:
            welcome = json.loads(bob.recv())
            assert welcome["type"] == "welcome" and welcome["user"] == "bob"
            joined, before = next_of(alice, "joined")
            assert joined == {"type": "joined", "user": "bob"} and before == []

            alice.send("hello bob")
            seen = [next_of(client, "message")[0] for client in (alice, bob)]
            assert seen[0] == seen[1]
            assert seen[0]["user"] == "alice" and seen[0]["text"] == "hello bob"
            alice_conn = seen[0]["conn"]

            bob.send(json.dumps({"text": "hi alice, \"quoted\" and ünïcode"}))
            seen = [next_of(client, "message")[0] for client in (alice, bob)]
            assert seen[0] == seen[1]
            assert seen[0]["user"] == "bob" and seen[0]["text"] == "hi alice, \"quoted\" and ünïcode"
            assert isinstance(seen[0]["conn"], str) and seen[0]["conn"] != alice_conn

            bob.send("   ")  # blank lines are not published
            bob.send("after the blank")
            message, before = next_of(alice, "message")
            assert message["text"] == "after the blank" and before == []

        left, _ = next_of(alice, "left")
        assert left == {"type": "left", "user": "bob"}

        with WsClient(gw.ws_url + "/chat/websocket") as anonymous:
            welcome = json.loads(anonymous.recv())
            assert welcome["user"].startswith("guest-")
            joined, _ = next_of(alice, "joined")
            assert joined["user"] == welcome["user"]


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_signature_is_checked(backend):
    """Only a body signed with the shared secret (as the gateway signs it) gets
    commands back; anything else is a 401 that carries none."""
    event = {"type": "message", "conn": "c1", "endpoint": "/chat", "user": "mallory", "data": "forged"}
    body = json.dumps({"events": [event]}).encode()
    other = json.dumps({"events": [{**event, "data": "tampered"}]}).encode()
    refused = [
        (body, {}),
        (body, {"X-Sockway-Signature": "sha256=" + "0" * 64}),
        (body, {"X-Sockway-Signature": sign("not-the-secret", body)}),
        (body, {"X-Sockway-Signature": sign(backend.secret, body).removeprefix("sha256=")}),
        (other, {"X-Sockway-Signature": sign(backend.secret, body)}),
    ]
    for data, headers in refused:
        status, answer = post(backend.url, data, headers)
        assert status == 401, (headers, answer)
        assert "commands" not in answer

    status, answer = post(backend.url, body, {"X-Sockway-Signature": sign(backend.secret, body)})
    assert status == 200
    assert answer["commands"] == [{"op": "publish", "channel": "chat", "data": {
        "type": "message", "user": "mallory", "conn": "c1", "text": "forged"}}]


def test_gateway_with_the_wrong_secret_gets_nothing(backend):
    """A gateway whose secret differs: the backend answers its batches with 401, so no
    command runs: no welcome, no subscription, nothing published; the client is never
    accepted and is closed with 4001 after auth_timeout (5 s)."""
    key = secrets.token_hex(8)
    with chat_gateway(backend, "not-the-secret", api_key=key) as gw, \
            WsClient(gw.ws_url + "/chat/websocket?name=eve") as eve:
        eve.send("is anyone there?")
        received: list = []
        closed = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                received.append(eve.recv(deadline - time.monotonic()))
            except TimeoutError:
                break
            except ConnectionClosed as exc:
                closed = exc
                break
        assert received == []
        assert closed is not None and closed.rcvd is not None and closed.rcvd.code == 4001

        request = urllib.request.Request(gw.url + "/api/stats", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            stats = json.loads(response.read())["result"]
        assert stats["commands"] == {"executed": 0, "failed": 0}
        assert stats["channels"]["publications"] == 0 and stats["channels"]["channels"] == 0
        assert stats["events"]["outputs"]["webhook"]["sent"] == 0
        assert "after 1 attempt(s): HTTP 401" in gw.output()  # a 401 is not retried
    assert "rejected a request with a wrong X-Sockway-Signature" in backend.proc.output()
