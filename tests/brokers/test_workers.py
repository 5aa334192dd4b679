"""``sockway serve --workers N``: N processes on one port (SO_REUSEPORT), each its own
node, sharing channels through the broker; refused with the memory broker."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

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


def two_free_ports() -> int:
    """A port P with P and P + 1 both free (bounded search)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


@run(60)
async def test_each_worker_on_a_port_of_its_own(redis_server):
    """--worker-ports BASE: worker i also listens on BASE + i, alone: two node ids, and
    a client connected on the shared port is counted by its own worker only."""
    base = two_free_ports()
    gw = start_node(redis_server.url, args=("--workers", "2", "--worker-ports", str(base)))
    try:
        own: dict[str, str] = {}
        deadline = time.monotonic() + 15
        while len(own) < 2 and time.monotonic() < deadline:
            for port in (base, base + 1):
                with contextlib.suppress(OSError):
                    own[http_get(f"http://127.0.0.1:{port}/sockway/health")[1]["node"]] = f"http://127.0.0.1:{port}"
            time.sleep(0.05)
        assert len(own) == 2, own
        client = await Client.connect(gw)
        node = client.conn.partition(".")[0]
        other = next(n for n in own if n != node)
        for _ in range(3):  # the same answer every time: no jumping between workers
            counts = {}
            for name, url in own.items():
                with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                    counts[name] = metric(r.read().decode(), "sockway_connections")
            assert counts == {node: 1.0, other: 0.0}, counts
        await client.close()
    finally:
        stop_node(gw)
    assert gw.proc.returncode == 0, gw.output()[-2000:]


def test_worker_ports_that_overlap_the_shared_port_are_refused():
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(node_config("redis://127.0.0.1:1/0"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sockway", "serve", "--config", f.name, "--port", str(port),
             "--workers", "2", "--worker-ports", str(port - 1)], capture_output=True, text=True, timeout=30,
            cwd=ROOT)
    finally:
        os.unlink(f.name)
    assert result.returncode == 2, result.stderr
    assert f"include the shared port {port}" in result.stderr


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
