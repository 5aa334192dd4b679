"""/metrics as Prometheus reads it (prometheus_client's own parser), while traffic flows
through a real gateway: connections by endpoint and transport (a transport's series
stays, at 0, after its last client leaves), connections opened and closed, messages
and bytes received and sent, slow-consumer closes, application commands (and not the
dashboard's reads), application events and their output queue (a webhook held back by
the test)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import websockets
import websockets.sync.client
from dashboard_support import API_KEY, RawClient, T, admin, api_command, http, wait_for
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from sockway.client import connect
from support import GatewayProcess, config_gateway

pytestmark = pytest.mark.timeout(60)


class Webhook:
    """The application's webhook: answers at once, or holds every request while
    ``hold`` is set (at most 8 s)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.events: list[dict] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.arrived.set()
                outer.open.wait(8)
                outer.events.extend(body["events"])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def close(self) -> None:
        self.open.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


@pytest.fixture(scope="module")
def mgw(webhook: Webhook) -> Iterator[GatewayProcess]:
    config = f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{API_KEY}"

[webhook]
url = "{webhook.url}"
timeout = 10

[[namespace]]
name = ""
publish = "open"
history_size = 10

[[endpoint]]
prefix = "/echo"
mode = "echo"
max_buffer = 65536

[[endpoint]]
prefix = "/app"
mode = "app"

[[endpoint]]
prefix = "/live"
mode = "channels"
"""
    with config_gateway(config) as proc:
        yield proc


def scrape(gw: GatewayProcess) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: {(name, sorted labels): value}."""
    status, headers, body = http(gw.url + "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("sockway_"), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


FAMILIES = {
    "sockway_connections": "gauge",
    "sockway_messages_received": "counter",
    "sockway_bytes_received": "counter",
    "sockway_bytes_sent": "counter",
    "sockway_connections_opened": "counter",
    "sockway_connections_closed": "counter",
    "sockway_channels": "gauge",
    "sockway_publications": "counter",
    "sockway_deliveries": "counter",
    "sockway_writes": "counter",
    "sockway_encodings": "counter",
    "sockway_slow_consumer_closes": "counter",
    "sockway_rate_limited_closes": "counter",
    "sockway_auth_failures": "counter",
    "sockway_rejected_connections": "counter",
    "sockway_events_emitted": "counter",
    "sockway_event_queue_length": "gauge",
    "sockway_events_dropped": "counter",
    "sockway_events_failed": "counter",
    "sockway_events_sent": "counter",
    "sockway_commands": "counter",
    "sockway_broker_up": "gauge",
    "sockway_command_duration_seconds": "histogram",
    "sockway_tcp_connections": "gauge",
    "sockway_tcp_refused": "counter",
    "sockway_timeouts": "counter",
    "sockway_bad_requests": "counter",
    "sockway_client_resets": "counter",
}


def test_families_and_types(mgw):
    _, _, body = http(mgw.url + "/metrics")
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    # The text format carries the histogram's creation time as a gauge of its own.
    assert families == {**FAMILIES, "sockway_command_duration_seconds_created": "gauge"}
    samples = scrape(mgw)
    assert value(samples, "sockway_broker_up", engine="memory") == 1
    assert value(samples, "sockway_event_queue_length", output="webhook") == 0


def test_openmetrics_when_asked(mgw):
    """What Prometheus asks for first."""
    status, headers, body = http(mgw.url + "/metrics", {
        "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                  "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    families = {f.name: f.type for f in openmetrics_families(body.decode())}
    assert families == FAMILIES


def test_connections_by_endpoint_and_transport(mgw):
    def scrape_when(expected: float, endpoint: str, transport: str):
        samples = scrape(mgw)
        return samples if value(samples, "sockway_connections", endpoint=endpoint, transport=transport) == expected \
            else None

    async def main():
        before = scrape(mgw)
        async with (
            websockets.connect(mgw.ws_url + "/echo/websocket", open_timeout=T),
            websockets.connect(mgw.ws_url + "/echo/websocket", open_timeout=T),
            connect(mgw.url + "/echo", transport="xhr-streaming"),
            connect(mgw.url + "/echo", transport="websocket"),
            websockets.connect(mgw.ws_url + "/live/websocket", open_timeout=T),
        ):
            during = await asyncio.to_thread(wait_for, lambda: scrape_when(1, "/live", "websocket"))
        after = await asyncio.to_thread(wait_for, lambda: scrape_when(0, "/echo", "websocket"))
        return before, during, after

    before, during, after = asyncio.run(main())
    assert during, "connections not counted"
    assert value(during, "sockway_connections", endpoint="/echo", transport="websocket") == 2
    assert value(during, "sockway_connections", endpoint="/echo", transport="xhr-streaming") == 1
    assert value(during, "sockway_connections", endpoint="/echo", transport="sockjs-websocket") == 1
    assert value(during, "sockway_connections", endpoint="/app", transport="websocket") is None
    opened = "sockway_connections_opened_total"
    assert value(during, opened, endpoint="/echo") - (value(before, opened, endpoint="/echo") or 0) == 4
    assert value(during, opened, endpoint="/live") - (value(before, opened, endpoint="/live") or 0) == 1

    assert after, "connections still counted after they closed"
    for transport in ("websocket", "xhr-streaming", "sockjs-websocket"):  # the series stay, at 0
        assert wait_for(lambda t=transport: value(scrape(mgw), "sockway_connections", endpoint="/echo",
                                                  transport=t) == 0, 10), transport
    closed = "sockway_connections_closed_total"
    assert wait_for(lambda: value(scrape(mgw), closed, endpoint="/echo")
                    - (value(before, closed, endpoint="/echo") or 0) == 4, 10)


def test_messages_and_bytes(mgw):
    before = scrape(mgw)

    async def main():
        async with websockets.connect(mgw.ws_url + "/echo/websocket", compression=None, open_timeout=T) as ws:
            for i in range(10):
                await ws.send(f"{i}" * 100)
                assert await asyncio.wait_for(ws.recv(), T) == f"{i}" * 100

    asyncio.run(main())
    after = scrape(mgw)

    def delta(name: str) -> float:
        return value(after, name, endpoint="/echo") - (value(before, name, endpoint="/echo") or 0)

    assert delta("sockway_messages_received_total") == 10
    # 10 frames of 100 bytes each way, plus headers, the handshake's tail, the close.
    assert 1000 < delta("sockway_bytes_received_total") < 1400
    assert 1000 < delta("sockway_bytes_sent_total") < 1300
    assert value(after, "sockway_writes_total") - value(before, "sockway_writes_total") >= 10


def test_slow_consumer_closes(mgw):
    """A client sends pings and never reads the pongs: closed as a slow consumer."""
    name = "sockway_slow_consumer_closes_total"
    before = value(scrape(mgw), name)
    ping = RawClient.frame(0x9, b"p" * 125)
    with RawClient(mgw.port, "/echo/websocket", rcvbuf=4096) as client, contextlib.suppress(OSError):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and value(scrape(mgw), name) == before:
            client.sock.sendall(ping * 2000)
    assert value(scrape(mgw), name) == before + 1
    assert admin(mgw.url, "/admin/api/stats")[1]["result"]["slow_consumers"] == before + 1


def test_commands_and_their_latency(mgw):
    before = scrape(mgw)
    assert api_command(mgw.url, "publish", {"channel": "news", "data": 1})[0] == 200
    assert api_command(mgw.url, "history", {"channel": "news"})[0] == 200
    assert api_command(mgw.url, "publish", {"channel": "bad channel!", "data": 1})[0] == 400
    # The dashboard's reads are not application commands.
    assert admin(mgw.url, "/admin/api/channel", name="news")[0] == 200
    assert admin(mgw.url, "/admin/api/stats")[0] == 200
    after = scrape(mgw)
    assert value(after, "sockway_commands_total", result="ok") - value(before, "sockway_commands_total",
                                                                       result="ok") == 2
    assert value(after, "sockway_commands_total", result="error") - value(before, "sockway_commands_total",
                                                                          result="error") == 1
    count = "sockway_command_duration_seconds_count"
    assert value(after, count) - value(before, count) == 3
    assert value(after, "sockway_command_duration_seconds_bucket", le="+Inf") == value(after, count)
    assert value(after, "sockway_publications_total") - value(before, "sockway_publications_total") == 0  # nobody here


def test_events_and_their_queue(mgw, webhook):
    """Events of an app endpoint wait in the webhook's queue while the application does
    not answer, then leave."""
    before = scrape(mgw)
    webhook.open.clear()
    webhook.arrived.clear()
    try:
        with websockets.sync.client.connect(mgw.ws_url + "/app/websocket", open_timeout=T) as ws:
            # The open event is on its way and held: what follows waits in the queue.
            assert webhook.arrived.wait(T)
            for i in range(5):
                ws.send(f"event {i}")
            queued = wait_for(lambda: value(scrape(mgw), "sockway_event_queue_length", output="webhook") >= 4)
            assert queued, "events not queued while the webhook is held"
            stats = admin(mgw.url, "/admin/api/stats")[1]["result"]
            assert stats["events"]["outputs"]["webhook"]["queued"] >= 4
    finally:
        webhook.open.set()
    # open, 5 messages, close
    assert wait_for(lambda: value(scrape(mgw), "sockway_events_sent_total", output="webhook")
                    - (value(before, "sockway_events_sent_total", output="webhook") or 0) == 7, 10)
    after = scrape(mgw)
    assert value(after, "sockway_event_queue_length", output="webhook") == 0
    assert value(after, "sockway_events_emitted_total") - value(before, "sockway_events_emitted_total") == 7
    assert value(after, "sockway_events_dropped_total", output="webhook") == 0
    assert value(after, "sockway_events_failed_total", output="webhook") == 0
    assert [e["type"] for e in webhook.events[-7:]] == ["open", *["message"] * 5, "close"]


@pytest.mark.parametrize("transport", ["xhr-polling", "xhr-streaming"])
def test_bytes_received_over_sockjs_http(mgw, transport):
    """What SockJS clients post (xhr_send) is read from them too."""
    async def main():
        async with connect(mgw.url + "/echo", transport=transport) as client:
            before = await asyncio.to_thread(scrape, mgw)
            await client.send("x" * 1000)
            assert await client.recv(T) == "x" * 1000
            return before, await asyncio.to_thread(scrape, mgw)

    before, after = asyncio.run(main())
    name = "sockway_bytes_received_total"
    assert value(after, name, endpoint="/echo") - value(before, name, endpoint="/echo") >= 1000
