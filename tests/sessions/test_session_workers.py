"""``sockway serve --workers 2``: the kernel spreads new connections over the worker
processes (SO_REUSEPORT), and a SockJS session over HTTP uses several connections (a
stream and its sends, polls on a new connection), so its requests reach both workers —
the same problem as a round-robin balancer, solved the same way: with sessions shared
through the broker every transport works; with ``sessions=off`` sessions break."""

from __future__ import annotations

import asyncio
import os
import tempfile

import pytest
from cluster import wait_status
from harness import broker_server

from sockway.client.sockjs import SockJSClient
from support import ROOT, GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)


async def echo(url: str, transport: str) -> str | None:
    """None when 20 messages echo in order, else what went wrong."""
    client = SockJSClient(url + "/echo", transport=transport, open_timeout=5)
    try:
        await client.open()
        messages = [f"{transport} {i}" for i in range(20)]
        for message in messages:
            await client.send(message)
        got = [await client.recv(5) for _ in messages]
        return None if got == messages else f"{client.session_url}: got {got}"
    except Exception as exc:
        return f"{client.session_url}: {exc!r}"
    finally:
        await client.close()


@pytest.mark.parametrize("options", ["", "?sessions=off"], ids=["shared", "not-shared"])
def test_worker_processes_share_sessions(options):
    with broker_server("redis") as server, tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[broker]\nurl = "{server.url}{options}"\n\n[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n')
        f.flush()
        port = free_port()
        gw = GatewayProcess(["serve", "--config", f.name, "--port", str(port), "--workers", "2"], port,
                            {"SOCKWAY_NO_UVLOOP": ""}, ROOT)
        try:
            gw.wait_ready()
            wait_status(gw, 200)

            async def scenario() -> list[str]:
                problems = []
                for transport in ("xhr-polling", "jsonp-polling", "xhr-streaming", "eventsource", "htmlfile"):
                    for _ in range(5):
                        problem = await echo(gw.url, transport)
                        if problem is not None:
                            problems.append(problem)
                return problems

            problems = asyncio.run(asyncio.wait_for(scenario(), 90))
        finally:
            gw.stop()
            os.unlink(f.name)
    if options:
        # A stream and its sends on two connections meet one worker in one case of two.
        assert problems, "25 sessions worked without shared sessions"
    else:
        assert problems == [], f"{problems}\n{gw.output()[-3000:]}"
