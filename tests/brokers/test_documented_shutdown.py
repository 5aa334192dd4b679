"""A bounded shutdown when the broker hangs (docs/deployment.md "Running it"): on
SIGTERM the gateway closes its clients, waits at most ``shutdown_timeout`` for them
and for the last application events, bounds every later step (3 s each: each bridge,
the HTTP connections, the broker) and exits 0, even when the broker has stopped
answering: a connection that stays open and never answers, made here with a TCP
forwarder in front of a broker of the test's own that stops forwarding (nothing is
done to the broker itself).

Two moments: the broker hangs while clients are connected and application events wait
to be written to it, or it hangs from the start (the gateway starts unready and keeps
trying)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest
from cluster import Client, broker_server, wait_status
from realtime_run import run

from support import ROOT, GatewayProcess, free_port, wait_for
from tcp_proxy import tcp_proxy

pytestmark = pytest.mark.timeout(90)

SHUTDOWN_TIMEOUT = 1.0
STEP = 3.0
BRIDGES = 1
"""The broker's event output (``events=on``): the only bridge of this configuration."""
BOUND = SHUTDOWN_TIMEOUT + STEP * BRIDGES + 2 * STEP
"""docs/deployment.md: shutdown_timeout + 3 s per bridge + 6 s."""
EXIT_MARGIN = 2.0
"""The interpreter's own exit on a loaded machine, after the gateway says "stopped"."""


def config(broker_url: str) -> str:
    return f"""
[server]
shutdown_timeout = {SHUTDOWN_TIMEOUT}
sweep_interval = 0.2

[broker]
url = "{broker_url}"

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[namespace]]
name = ""
publish = "open"
history_size = 10
presence = true
"""


def broker_url(engine: str, port: int) -> str:
    if engine == "redis":
        return f"redis://127.0.0.1:{port}/0?events=on"
    return f"nats://127.0.0.1:{port}?events=on"


@contextlib.contextmanager
def gateway_on(url: str):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config(url))
    port = free_port()
    gw = GatewayProcess(["serve", "--config", f.name, "--port", str(port)], port, {"SOCKWAY_NO_UVLOOP": ""}, ROOT)
    try:
        yield gw
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(5)
        os.unlink(f.name)


def stop_and_time(gw: GatewayProcess) -> tuple[int, float]:
    start = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        code = gw.proc.wait(BOUND + EXIT_MARGIN)
    except subprocess.TimeoutExpired:
        output = gw.output()[-4000:]
        raise AssertionError(f"still running {BOUND + EXIT_MARGIN:.0f}s after SIGTERM:\n{output}") from None
    return code, time.monotonic() - start


def queued(gw: GatewayProcess) -> float:
    """Events waiting in the broker output's queue (/metrics)."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("sockway_event_queue_length{"))


def assert_clean(log: str) -> None:
    """Warnings say where a step waited; nothing is an error or a traceback."""
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]
    assert "INFO sockway: stopped" in log, log[-4000:]


@pytest.mark.parametrize("engine", ["redis", "nats"])
@run(60)
async def test_the_broker_hangs_during_traffic(engine):
    with broker_server(engine) as server, tcp_proxy(server.port) as proxy, \
            gateway_on(broker_url(engine, proxy.port)) as gw:
        gw.wait_ready()
        await asyncio.to_thread(wait_status, gw, 200)
        first = await Client.connect(gw)
        await first.ok("subscribe", channel="news")
        await first.ok("publish", channel="news", data="before")
        proxy.hang()
        # Events the broker will never take: the event output holds one in flight
        # (the open), the two closes wait in its queue.
        second = await Client.connect(gw)
        await first.close()
        await second.close()
        assert await asyncio.to_thread(wait_for, lambda: queued(gw) == 2, 5)
        code, elapsed = await asyncio.to_thread(stop_and_time, gw)
        log = gw.output()
    assert code == 0, log[-4000:]
    assert elapsed <= BOUND + EXIT_MARGIN
    assert_clean(log)


@pytest.mark.parametrize("engine", ["redis", "nats"])
def test_the_broker_hangs_from_the_start(engine):
    with broker_server(engine) as server, tcp_proxy(server.port) as proxy:
        proxy.hang()
        with gateway_on(broker_url(engine, proxy.port)) as gw:
            gw.wait_ready(30)
            # Started (past the broker's connect_timeout), not ready: the broker does
            # not answer.
            assert wait_for(lambda: "sockway listening" in gw.output(), 15), gw.output()
            wait_status(gw, 503)
            code, elapsed = stop_and_time(gw)
            log = gw.output()
    assert code == 0, log[-4000:]
    assert elapsed <= BOUND + EXIT_MARGIN
    assert_clean(log)
