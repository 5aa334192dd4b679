"""``sockway trace`` as a user runs it: a subprocess against a real gateway, with each
filter (endpoint, connection, user, channel, regular expression), as text lines and as
JSON lines, and its errors (bad regular expression, wrong or missing key, no admin API,
no gateway) with their exit status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
import websockets
from dashboard_support import API_KEY, T, api_command, token, wait_for, watchers

from support import ROOT, config_gateway, free_port

pytestmark = pytest.mark.timeout(60)


def start(gw, *args: str, key: str | None = API_KEY) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("SOCKWAY_API_KEY", "SOCKWAY_URL")}
    command = [sys.executable, "-m", "sockway", "trace", *(("--url", gw.url) if gw else ()), *args]
    if key is not None:
        command += ["--key", key]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def traced(gw, args: list[str], traffic, count: int) -> tuple[list[str], str]:
    """Run ``sockway trace --count N`` with ``args``, make ``traffic()`` once it
    watches, and return its output lines and its error output."""
    before = watchers(gw.url)
    proc = start(gw, *args, "--count", str(count), "--timeout", "10")
    try:
        assert wait_for(lambda: watchers(gw.url) > before or proc.poll() is not None, 10), "no watcher"
        assert proc.poll() is None, proc.communicate()
        asyncio.run(traffic())
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out.splitlines(), err


async def echo(gw, path: str, *messages: str, query: str = "") -> None:
    async with websockets.connect(f"{gw.ws_url}{path}/websocket{query}", open_timeout=T) as ws:
        for message in messages:
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), T) == message


def test_jsonl_with_endpoint_filter(gw):
    text = f"cli-{uuid.uuid4().hex[:8]}"

    async def traffic():
        await echo(gw, "/other", "not this one")
        await echo(gw, "/echo", text)

    lines, err = traced(gw, ["--endpoint", "/echo", "--jsonl"], traffic, 2)
    records = [json.loads(line) for line in lines]
    assert [(r["dir"], r["kind"], r["endpoint"], r["data"]) for r in records] == [
        ("in", "ws-text", "/echo", text), ("out", "ws-text", "/echo", text)]
    assert err == ""


def test_text_lines_with_regex(gw):
    text = f"cli-{uuid.uuid4().hex[:8]}"

    async def traffic():
        await echo(gw, "/echo", "skipped", text)

    lines, err = traced(gw, ["--match", r"^cli-[0-9a-f]{8}$"], traffic, 2)
    assert len(lines) == 2, lines
    assert " < " in lines[0] and " > " in lines[1]
    for line in lines:
        assert "/echo websocket [ws-text 12B" in line and line.endswith(text)
    assert "* tracing" in err and "'match': '^cli-[0-9a-f]{8}$'" in err


def test_user_filter(gw):
    async def traffic():
        await echo(gw, "/echo", "anonymous")
        await echo(gw, "/echo", "from bob", query="?token=" + token("bob"))
        await echo(gw, "/echo", "from carol", query="?token=" + token("carol"))

    lines, _ = traced(gw, ["--user", "carol", "--jsonl"], traffic, 2)
    records = [json.loads(line) for line in lines]
    assert [(r["user"], r["dir"], r["data"]) for r in records] == [
        ("carol", "in", "from carol"), ("carol", "out", "from carol")]


def test_channel_filter_shows_publications(gw):
    """Publications are traced where they are delivered: on a node with subscribers."""
    channel = f"cli{uuid.uuid4().hex[:8]}"

    async def traffic():
        async with websockets.connect(gw.ws_url + "/live/websocket", open_timeout=T) as ws:
            await asyncio.wait_for(ws.recv(), T)
            await ws.send(json.dumps({"op": "subscribe", "channel": channel, "id": 1}))
            await asyncio.wait_for(ws.recv(), T)
            for name in ("elsewhere", channel):
                status, body = await asyncio.to_thread(api_command, gw.url, "publish",
                                                       {"channel": name, "data": {"n": 1}})
                assert status == 200, body
            assert json.loads(await asyncio.wait_for(ws.recv(), T))["data"] == {"n": 1}

    # The subscriber's own frames are its channel's too: subscribe, reply, publication, delivery.
    lines, _ = traced(gw, ["--channel", channel], traffic, 4)
    publications = [line for line in lines if " * " in line]
    assert len(publications) == 1, lines
    assert f" * {channel} " in publications[0] and "[publication 7B #1]" in publications[0]
    assert publications[0].endswith('{"n":1}')


def test_connection_filter(gw):
    async def main():
        async with (
            websockets.connect(gw.ws_url + "/live/websocket", open_timeout=T) as first,
            websockets.connect(gw.ws_url + "/live/websocket", open_timeout=T) as second,
        ):
            conns = [json.loads(await asyncio.wait_for(ws.recv(), T))["conn"] for ws in (first, second)]
            before = watchers(gw.url)
            proc = start(gw, "--conn", conns[1], "--jsonl", "--count", "2", "--timeout", "10")
            try:
                assert await asyncio.to_thread(wait_for, lambda: watchers(gw.url) > before, 10)
                for ws in (first, second):
                    await ws.send(json.dumps({"op": "ping", "id": 5}))
                    await asyncio.wait_for(ws.recv(), T)
                out, err = await asyncio.to_thread(proc.communicate, timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            return conns, proc.returncode, out, err

    conns, status, out, err = asyncio.run(main())
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["conn"], r["dir"]) for r in records] == [(conns[1], "in"), (conns[1], "out")]
    assert json.loads(records[0]["data"]) == {"op": "ping", "id": 5}


def test_errors_and_exit_status(gw):
    proc = start(gw, "--match", "(unclosed")
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 2 and "invalid regular expression '(unclosed'" in err and out == ""

    proc = start(gw, key="not-the-key")
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 1, err
    assert "the gateway refused: HTTP 401 unauthorized: send the API key" in err

    proc = start(gw, key=None)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 2 and "needs --key" in err

    proc = start(None, "--url", f"http://127.0.0.1:{free_port()}")
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1 and "cannot reach" in err


def test_gateway_without_api_key():
    with config_gateway('[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n') as plain:
        proc = start(plain)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert "HTTP 404 not_enabled: the admin API needs an API key: set [api] key" in err


def test_gateway_stopping_ends_the_trace():
    config = (f'[server]\nshutdown_timeout = 1\n[api]\nkey = "{API_KEY}"\n'
              '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n')
    with config_gateway(config) as short:
        proc = start(short)
        try:
            assert wait_for(lambda: watchers(short.url) == 1, 10)
            short.stop()
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1
    assert "the gateway ended the trace" in err
