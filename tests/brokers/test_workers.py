"""``sockway serve --workers N``: N processes on one port (SO_REUSEPORT), each its own
node, sharing channels through the broker; refused with the memory broker."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest
from cluster import Client, api_ok, http_get, node_config, start_node, stop_node
from realtime_run import run

from support import ROOT, free_port

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("engine", ["redis", "nats"])
@run(60)
async def test_two_workers_serve_one_port(engine, request):
    server = request.getfixturevalue(f"{engine}_server")
    gw = start_node(server.url, args=("--workers", "2"))
    try:
        # Both workers listen (each new connection may land on either one).
        workers: set[str] = set()
        deadline = time.monotonic() + 15
        while len(workers) < 2 and time.monotonic() < deadline:
            if http_get(gw.url + "/readyz")[0] == 200:
                workers.add(http_get(gw.url + "/sockway/health")[1]["node"])
            time.sleep(0.02)
        assert len(workers) == 2, workers
        # Connections land on both workers (the kernel spreads them by address hash).
        clients, nodes_seen = [], set()
        for _ in range(40):
            client = await Client.connect(gw)
            clients.append(client)
            nodes_seen.add(client.conn.partition(".")[0])
            if len(nodes_seen) == 2 and len(clients) >= 4:
                break
        assert len(nodes_seen) == 2, nodes_seen
        channel = f"w-{os.urandom(3).hex()}"
        for client in clients:
            await client.ok("subscribe", channel=channel)
        await clients[0].ok("publish", channel=channel, data="to all workers")
        for client in clients:
            assert (await client.next("message"))["data"] == "to all workers"
        # A command for a connection lands on either worker and reaches it.
        target = clients[-1]
        for _ in range(4):
            await api_ok(gw, "send", conn=target.conn, data="direct")
            assert (await target.next("message"))["data"] == "direct"
        for client in clients:
            await client.close()
        status, _ = http_get(gw.url + "/readyz")
        assert status == 200
    finally:
        stop_node(gw)
    assert gw.proc.returncode == 0, gw.output()[-2000:]


def test_workers_refused_with_the_memory_broker():
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(node_config("memory://"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sockway", "serve", "--config", f.name, "--port", str(free_port()),
             "--workers", "2"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    finally:
        os.unlink(f.name)
    assert result.returncode == 2
    assert "--workers 2 needs a shared broker" in result.stderr
    assert "redis://" in result.stderr
