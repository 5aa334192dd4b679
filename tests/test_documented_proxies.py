"""Trusted proxies through a running gateway (docs/security.md "Proxies and client
addresses", "Origins"; docs/deployment.md): from a peer listed in ``trusted_proxies``,
X-Forwarded-For gives the client address (the last hop that is not a trusted proxy)
that the application's events and the admin API report, and X-Forwarded-Proto /
X-Forwarded-Host give the origin the same-origin check compares with; from any other
peer the headers are ignored.

Two ways: behind a real nginx configured as docs/deployment.md says, and with requests
sent straight from 127.0.0.1 (trusted) and 127.0.0.2 (not trusted; Linux routes all
of 127.0.0.0/8 to the loopback interface) on every kind of connection: raw WebSocket,
SockJS over WebSocket, SockJS over HTTP, and the legacy hixie-76 handshake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sys
import urllib.request
from pathlib import Path

import aiohttp
import websockets

from realtime import T, run
from support import HIXIE_KEY1, HIXIE_KEY2, HIXIE_KEY3, config_gateway, hixie_answer, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent / "sessions"))
from harness import Nginx

KEY = "proxy-test-key"
TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"


def config(trusted: bool) -> str:
    proxies = f'["{TRUSTED}"]' if trusted else "[]"
    return f"""
[server]
trusted_proxies = {proxies}
sweep_interval = 0.2
access_log = true

[api]
key = "{KEY}"

[[endpoint]]
prefix = "/app"
mode = "app"
"""


def connections(gw) -> list[dict]:
    request = urllib.request.Request(gw.url + "/admin/api/connections?endpoint=/app", headers={"X-API-Key": KEY})
    with urllib.request.urlopen(request, timeout=T) as r:
        return json.load(r)["result"]["connections"]


def remote_of_the_one_connection(gw) -> str:
    """The address the gateway gives the only connection of /app (waited for)."""
    assert wait_for(lambda: len(connections(gw)) == 1, T), connections(gw)
    return connections(gw)[0]["remote"]


def until_no_connection(gw) -> None:
    assert wait_for(lambda: connections(gw) == [], T), connections(gw)


class Events:
    """The application's ``open`` events, from the admin API's event stream."""

    def __init__(self, gw) -> None:
        self.url = gw.ws_url + f"/admin/api/events?type=open&key={KEY}"
        self.opens: list[dict] = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Events:
        self.ws = await websockets.connect(self.url, open_timeout=T)
        assert json.loads(await asyncio.wait_for(self.ws.recv(), T))["type"] == "events"
        self.task = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                self.opens.extend(json.loads(message)["items"])

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        assert self.task is not None
        await self.task


# -- the four kinds of connection, from a given source address, with given headers ----------

async def raw_websocket(gw, port: int, source: str, headers: dict[str, str]) -> int:
    """Open a raw WebSocket, leave it open until the gateway lists it, close it:
    the handshake's status (101, or the refusal's)."""
    return await _websocket(gw, f"ws://127.0.0.1:{port}/app/websocket", source, headers)


async def sockjs_websocket(gw, port: int, source: str, headers: dict[str, str]) -> int:
    return await _websocket(gw, f"ws://127.0.0.1:{port}/app/000/{os.urandom(4).hex()}/websocket",
                            source, headers)


async def _websocket(gw, url: str, source: str, headers: dict[str, str]) -> int:
    try:
        ws = await websockets.connect(url, origin=None, additional_headers=headers, open_timeout=T,
                                      compression=None, local_addr=(source, 0))
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    try:
        gw.seen.append(await asyncio.to_thread(remote_of_the_one_connection, gw))
    finally:
        await ws.close()
        await asyncio.to_thread(until_no_connection, gw)
    return 101


async def xhr_session(gw, port: int, source: str, headers: dict[str, str]) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        url = f"http://127.0.0.1:{port}/app/000/{os.urandom(4).hex()}"
        async with http.post(url + "/xhr", headers=headers, timeout=aiohttp.ClientTimeout(total=T)) as r:
            if r.status != 200:
                return r.status
            assert await r.text() == "o\n"
        gw.seen.append(await asyncio.to_thread(remote_of_the_one_connection, gw))
        # The application closes it (the close command), and the session goes.
        conn = connections(gw)[0]["conn"]
        request = urllib.request.Request(gw.url + "/api/close", data=json.dumps({"conn": conn}).encode(),
                                         headers={"X-API-Key": KEY, "Content-Type": "application/json"})
        await asyncio.to_thread(urllib.request.urlopen, request, None, T)
        await asyncio.to_thread(until_no_connection, gw)
    return 200


async def hixie76(gw, port: int, source: str, headers: dict[str, str]) -> int:
    return await asyncio.to_thread(_hixie76, gw, port, source, headers)


def _hixie76(gw, port: int, source: str, headers: dict[str, str]) -> int:
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(T)
        sock.connect(("127.0.0.1", port))
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall((f"GET /app/000/{os.urandom(4).hex()}/websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Connection: Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Key1: {HIXIE_KEY1}\r\n"
                      f"Sec-WebSocket-Key2: {HIXIE_KEY2}\r\n{extra}\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            return status
        sock.sendall(HIXIE_KEY3)
        expected = hixie_answer(HIXIE_KEY1, HIXIE_KEY2, HIXIE_KEY3) + b"\x00o\xff"
        while len(rest) < len(expected):
            rest += sock.recv(4096)
        assert rest[:len(expected)] == expected
        gw.seen.append(remote_of_the_one_connection(gw))
    until_no_connection(gw)
    return 101


KINDS = {"websocket": raw_websocket, "sockjs-websocket": sockjs_websocket, "xhr-polling": xhr_session,
         "sockjs-websocket-hixie76": hixie76}
OPENED = {"websocket": 101, "sockjs-websocket": 101, "xhr-polling": 200, "sockjs-websocket-hixie76": 101}
"""The status of an accepted connection of each kind."""


# -- straight from a trusted and from an untrusted address -----------------------------------

FORWARDED = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "rt.example.com"}
"""A client (203.0.113.9, which claims to be forwarding for 198.51.100.1: a claim no
trusted proxy made), then a trusted proxy (127.0.0.1) that reached the gateway through
TLS at rt.example.com."""


@run(90)
async def test_forwarded_headers_from_a_trusted_peer_and_from_any_other():
    with config_gateway(config(trusted=True)) as gw:
        gw.seen = []
        async with Events(gw) as events:
            expected_remotes = []
            for name, connect in KINDS.items():
                # From the trusted proxy: the client is the last untrusted hop, and the
                # origin it used is https://rt.example.com.
                assert await connect(gw, gw.port, TRUSTED, {**FORWARDED, "Origin": "https://rt.example.com"}) \
                    == OPENED[name], name
                expected_remotes.append((name, "203.0.113.9"))
                # ... so the gateway's direct address is another origin there.
                assert await connect(gw, gw.port, TRUSTED, {**FORWARDED, "Origin": gw.url}) == 403, name
                # From any other peer the headers say nothing: the client is the peer,
                # and the origin is the one it really used.
                assert await connect(gw, gw.port, UNTRUSTED, {**FORWARDED, "Origin": "https://rt.example.com"}) \
                    == 403, name
                assert await connect(gw, gw.port, UNTRUSTED, {**FORWARDED, "Origin": gw.url}) == OPENED[name], name
                expected_remotes.append((name, UNTRUSTED))
            await asyncio.to_thread(wait_for, lambda: len(events.opens) == len(expected_remotes), T)
        assert [(e["transport"], e["remote"]) for e in events.opens] == expected_remotes
        assert gw.seen == [remote for _, remote in expected_remotes]
        # The access log names the same client, for each poll that opened (or tried
        # to open) an xhr session.
        polls = re.findall(r'INFO sockway: (\S+) "POST /app/000/\w+/xhr HTTP/1\.1" (\d+) ', gw.output())
        assert polls == [("203.0.113.9", "200"), ("203.0.113.9", "403"), (UNTRUSTED, "403"), (UNTRUSTED, "200")]


# -- behind nginx, configured as docs/deployment.md says -------------------------------------

def documented_nginx_config(directory: str, listen: int, upstream: int) -> str:
    """The first nginx configuration of docs/deployment.md, verbatim but for the
    addresses: plain HTTP on a free port of 127.0.0.1 instead of 443 with TLS (the
    certificate lines go), the gateway on its test port; wrapped in the few lines a
    stand-alone nginx needs (its pid, logs and temporary files in ``directory``)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
    block = doc.split("```nginx\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        stripped = line.strip()
        if stripped.startswith(("ssl_certificate", "server_name")):
            continue
        if stripped == "listen 443 ssl;":
            line = line.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen};")
        if stripped == "server 127.0.0.1:8080;":
            line = line.replace("8080", str(upstream))
        lines.append(line)
    assert any(f"127.0.0.1:{listen}" in line for line in lines) and any(str(upstream) in line for line in lines)
    temp = "\n".join(f"    {kind}_temp_path {directory}/{kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"worker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log warn;\n"
            f"events {{\n    worker_connections 256;\n}}\nhttp {{\n{temp}\n    access_log off;\n"
            + "\n".join(lines) + "\n}\n")


@contextlib.contextmanager
def documented_nginx(upstream: int):
    nginx = Nginx([upstream])
    with open(nginx.conf, "w") as f:
        f.write(documented_nginx_config(nginx.dir, nginx.port, upstream))
    with nginx:
        yield nginx


@run(60)
async def test_behind_nginx_as_documented():
    """A browser at 127.0.0.2 opens a page of http://127.0.0.1:<nginx port> and connects:
    a gateway that trusts nginx sees 127.0.0.2 and the page's origin as its own; one
    that does not sees nginx (127.0.0.1) and refuses the page's origin (nginx passes
    ``Host`` without the port, the origin has it)."""
    for trusted in (True, False):
        with config_gateway(config(trusted)) as gw, documented_nginx(gw.port) as nginx:
            gw.seen = []
            page = nginx.url  # http://127.0.0.1:<port>, the origin of the page
            for name in ("websocket", "sockjs-websocket", "xhr-polling"):
                status = await KINDS[name](gw, nginx.port, UNTRUSTED, {"Origin": page})
                assert status == (OPENED[name] if trusted else 403), (trusted, name)
                assert await KINDS[name](gw, nginx.port, UNTRUSTED, {}) == OPENED[name], (trusted, name)
            client = UNTRUSTED if trusted else TRUSTED
            assert gw.seen == [client] * (6 if trusted else 3), trusted
