"""Connection tokens' ``aud``, ``iss`` and ``leeway`` on a running gateway
(docs/security.md "Tokens", docs/configuration.md ``[auth]``): with ``jwt_audience``
and ``jwt_issuer`` configured, a token must carry both, equal to them (``aud`` may be
a list that contains it); ``exp`` and ``nbf`` are enforced with ``leeway`` seconds of
clock skew. A refused token closes the connection with 4001 and the reason — SockJS
with ``c[4001,"<reason>"]`` after its open frame, a raw WebSocket with close code 4001
after the handshake — and in channels mode the ``auth`` command is answered with the
``unauthorized`` error and the same reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import jwt
import pytest
import websockets

from realtime import ChannelsClient, T, run
from support import config_gateway

SECRET = "documented-jwt-secret-of-32-bytes!"
AUDIENCE = "sockway-tests"
ISSUER = "https://issuer.test"
LEEWAY = 30

CONFIG = f"""
[server]
sweep_interval = 0.2

[auth]
jwt_secret = "{SECRET}"
jwt_audience = "{AUDIENCE}"
jwt_issuer = "{ISSUER}"
leeway = {LEEWAY}

[[endpoint]]
prefix = "/secure"
mode = "echo"
anonymous = false

[[endpoint]]
prefix = "/ch"
mode = "channels"
"""


@pytest.fixture(scope="module")
def gw():
    with config_gateway(CONFIG) as proc:
        yield proc


def token(**changes) -> str:
    """A token valid for a minute, with ``changes`` (None removes a claim)."""
    claims = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}
    for name, value in changes.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    return jwt.encode(claims, SECRET, algorithm="HS256")


def accepted() -> list[tuple[str, str]]:
    now = int(time.time())
    return [
        ("valid", token()),
        ("aud a list with ours", token(aud=["other", AUDIENCE])),
        ("expired within the leeway", token(exp=now - LEEWAY // 3)),
        ("not yet valid within the leeway", token(nbf=now + LEEWAY // 3)),
    ]


def refused() -> list[tuple[str, str, str]]:
    """(case, token, the reason the client is given)."""
    now = int(time.time())
    return [
        ("expired beyond the leeway", token(exp=now - 3 * LEEWAY), "token expired"),
        ("not yet valid beyond the leeway", token(nbf=now + 3 * LEEWAY),
         "invalid token: The token is not yet valid (nbf)"),
        ("wrong audience", token(aud="someone-else"), "invalid token: Audience doesn't match"),
        ("no audience", token(aud=None), 'invalid token: Token is missing the "aud" claim'),
        ("wrong issuer", token(iss="https://evil.test"), "invalid token: Invalid issuer"),
        ("no issuer", token(iss=None), 'invalid token: Token is missing the "iss" claim'),
    ]


async def sockjs_session(gw, jwt_token: str) -> list[str]:
    """The frames of a SockJS WebSocket session opened with ``?token=`` that sends one
    message: its echo, or the close frame (then the connection ends)."""
    url = f"{gw.ws_url}/secure/000/{os.urandom(4).hex()}/websocket?token={jwt_token}"
    frames = []
    async with websockets.connect(url, open_timeout=T, compression=None) as ws:
        frames.append(await asyncio.wait_for(ws.recv(), T))
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps(["ping"]))  # a refused session may be closed already
        with contextlib.suppress(websockets.ConnectionClosed):  # after the close frame
            frames.append(await asyncio.wait_for(ws.recv(), T))
    return frames


async def raw_websocket(gw, jwt_token: str) -> tuple[str | None, int | None, str]:
    """(the echo or None, close code, close reason) of a raw WebSocket with ``?token=``."""
    url = f"{gw.ws_url}/secure/websocket?token={jwt_token}"
    async with websockets.connect(url, open_timeout=T, compression=None) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send("ping")  # a refused connection may be closed already
        try:
            return await asyncio.wait_for(ws.recv(), T), None, ""
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None
            return None, exc.rcvd.code, exc.rcvd.reason


@run(60)
async def test_accepted_tokens(gw):
    for case, jwt_token in accepted():
        assert await sockjs_session(gw, jwt_token) == ["o", 'a["ping"]'], case
        assert await raw_websocket(gw, jwt_token) == ("ping", None, ""), case
        client = await ChannelsClient.connect(gw, "/ch")
        result = await client.ok("auth", token=jwt_token)
        assert (result["user"], result["conn"]) == ("alice", client.conn), case
        await client.close()


@run(60)
async def test_refused_tokens(gw):
    for case, jwt_token, reason in refused():
        close_frame = "c" + json.dumps([4001, reason], separators=(",", ":"))
        assert await sockjs_session(gw, jwt_token) == ["o", close_frame], case
        assert await raw_websocket(gw, jwt_token) == (None, 4001, reason), case
        client = await ChannelsClient.connect(gw, "/ch")
        reply = await client.request("auth", token=jwt_token)
        assert reply["error"] == {"code": "unauthorized", "message": reason}, case
        await client.close()
