"""``sockway serve --workers 2``: the kernel spreads new connections over the worker
processes (SO_REUSEPORT), and a SockJS session over HTTP uses several connections (a
stream and its sends, polls on a new connection), so its requests reach both workers —
the same problem as a round-robin balancer, solved the same way: with sessions shared
through the broker every transport works, and a request that reaches the worker not
holding the session is served all the same; with ``sessions=off`` that worker does not
know the session (a send gets 404, a receiving request opens a second session).

Each worker also listens alone on its own port (``worker_ports``), so the tests choose
which worker gets which request."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import pytest
from cluster import http_get, wait_status
from harness import broker_server
from rawsockjs import POLLING, TRANSPORTS, RawSession

from sockway.client.sockjs import SockJSClient
from support import ROOT, GatewayProcess, free_port, wait_for

pytestmark = pytest.mark.timeout(120)


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free now."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
            return base
    raise RuntimeError("no two consecutive free ports in 50 tries")


def ready(url: str) -> int:
    try:
        return http_get(url + "/readyz")[0]
    except OSError:
        return 0


async def echo(url: str, transport: str) -> None:
    """20 messages echo in order over ``transport`` through the shared port."""
    client = SockJSClient(url + "/echo", transport=transport, open_timeout=5)
    try:
        await client.open()
        messages = [f"{transport} {i}" for i in range(20)]
        for message in messages:
            await client.send(message)
        assert [await client.recv(5) for _ in messages] == messages, client.session_url
    finally:
        await client.close()


async def across_workers(owner_url: str, other_url: str, transport: str, shared: bool) -> None:
    """A session opened over ``transport`` on one worker, then a send through the other
    worker's own port."""
    async with RawSession(owner_url + "/echo") as owner, \
            RawSession(other_url + "/echo", owner.session_id) as other:
        first = await owner.receiving(transport)  # a stream: attached; a poll: "o" at once
        try:
            assert await first.frame() == "o"
            status, body, _ = await other.send("hello", transport=transport)
            if not shared:
                assert (status, body) == (404, ""), (transport, status, body)
                frame, _ = await other.receive(transport)
                assert frame == "o", (transport, frame)  # a second session under the same id
                return
            assert (status, body) == ((200, "ok") if transport == "jsonp-polling" else (204, "")), transport
            if transport in POLLING:
                frame, _ = await owner.receive(transport)
            else:
                frame = await first.frame()
            assert frame == 'a["hello"]', (transport, frame)
        finally:
            first.abort()


@pytest.mark.parametrize("options", ["", "?sessions=off"], ids=["shared", "not-shared"])
def test_worker_processes_share_sessions(options):
    shared = not options
    with broker_server("redis") as server, tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[broker]\nurl = "{server.url}{options}"\n\n[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n')
        f.flush()
        port, own = free_port(), two_free_ports()
        gw = GatewayProcess(["serve", "--config", f.name, "--port", str(port), "--workers", "2",
                             "--worker-ports", str(own)], port, {"SOCKWAY_NO_UVLOOP": ""}, ROOT)
        workers = [f"http://127.0.0.1:{own}", f"http://127.0.0.1:{own + 1}"]
        try:
            gw.wait_ready(40)  # two processes starting on a loaded machine
            wait_status(gw, 200, 40)
            for url in workers:  # each worker ready on its own port
                assert wait_for(lambda url=url: ready(url) == 200, 40), f"{url} not ready"

            async def scenario() -> None:
                for transport in TRANSPORTS:
                    await across_workers(workers[0], workers[1], transport, shared)
                    await across_workers(workers[1], workers[0], transport, shared)
                    if shared:
                        # Through the shared port, where the kernel picks the worker.
                        for _ in range(3):
                            await echo(gw.url, transport)

            asyncio.run(asyncio.wait_for(scenario(), 90))
        except BaseException:
            print(gw.output()[-3000:])
            raise
        finally:
            gw.stop()
            os.unlink(f.name)
