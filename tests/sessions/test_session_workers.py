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


async def echo(url: str, transport: str) -> bool:
    client = SockJSClient(url + "/echo", transport=transport, open_timeout=5)
    try:
        await client.open()
        messages = [f"{transport} {i}" for i in range(20)]
        for message in messages:
            await client.send(message)
        return [await client.recv(3) for _ in messages] == messages
    except Exception:
        return False
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

            async def scenario() -> dict[str, int]:
                worked = {}
                for transport in ("xhr-polling", "jsonp-polling", "xhr-streaming", "eventsource", "htmlfile"):
                    results = [await echo(gw.url, transport) for _ in range(5)]
                    worked[transport] = sum(results)
                return worked

            worked = asyncio.run(asyncio.wait_for(scenario(), 90))
        finally:
            gw.stop()
            os.unlink(f.name)
    if options:
        # A stream and its sends on two connections meet one worker in two cases of four.
        assert sum(worked.values()) < 25, worked
    else:
        assert worked == dict.fromkeys(worked, 5), worked
