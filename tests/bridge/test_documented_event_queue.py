"""``event_queue_size`` (docs/configuration.md, docs/bridge.md "Events"): each output
has a bounded queue of application events; when it is full, ``message`` events are
dropped and counted (``sockway_events_dropped_total``, a warning in the log), while
``open`` and ``close`` events are always kept, so the application never loses track of
who is connected.

The application here is a webhook (an aiohttp server in the test process) that stalls:
it holds the first POST until the test lets it answer. Meanwhile a client sends 20
messages into a queue of 5, a second client connects and the first leaves."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import websockets
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from realtime import T, run
from support import config_gateway, free_port

QUEUE = 5


class StallingApp:
    """The webhook: records every event, in order; holds the first request until
    :attr:`release` is set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[dict] = []
        self.first = asyncio.Event()
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        events = json.loads(await request.read())["events"]
        if not self.first.is_set():
            self.first.set()
            await self.release.wait()
        self.events.extend(events)
        return web.json_response({})

    async def __aenter__(self) -> StallingApp:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.runner is not None
        await self.runner.cleanup()


def output_counters(gw) -> tuple[float, float]:
    """(events waiting, events dropped) of the webhook output, from /metrics."""
    with urllib.request.urlopen(gw.url + "/metrics", timeout=T) as r:
        samples = {(s.name, s.labels.get("output")): s.value
                   for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}
    return samples[("sockway_event_queue_length", "webhook")], samples[("sockway_events_dropped_total", "webhook")]


async def until_counters(gw, expected: tuple[float, float]) -> None:
    deadline = asyncio.get_running_loop().time() + T
    while (got := await asyncio.to_thread(output_counters, gw)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"queue, dropped = {got}, not {expected}"
        await asyncio.sleep(0.05)


@run(45)
async def test_a_full_queue_drops_messages_never_open_or_close():
    async with StallingApp() as app:
        config = f"""
[server]
event_queue_size = {QUEUE}
sweep_interval = 0.2

[webhook]
url = "http://127.0.0.1:{app.port}/hook"
timeout = 30

[[endpoint]]
prefix = "/app"
mode = "app"
"""
        with config_gateway(config) as gw:
            url = gw.ws_url + "/app/websocket"
            first = await websockets.connect(url, open_timeout=T)
            # Its open event is the first batch: the application holds that request.
            await asyncio.wait_for(app.first.wait(), T)
            await until_counters(gw, (0, 0))
            messages = [f"m{i}" for i in range(20)]
            for message in messages:
                await first.send(message)
            await until_counters(gw, (QUEUE, len(messages) - QUEUE))
            # The queue is full: an open and a close are kept all the same...
            second = await websockets.connect(url, open_timeout=T)
            await first.close()
            await until_counters(gw, (QUEUE + 2, len(messages) - QUEUE))
            # ... and a message is not.
            await second.send("late")
            await until_counters(gw, (QUEUE + 2, len(messages) - QUEUE + 1))

            app.release.set()
            await second.close()
            await until_counters(gw, (0, len(messages) - QUEUE + 1))
            deadline = asyncio.get_running_loop().time() + T
            while len(app.events) < 1 + QUEUE + 3:
                assert asyncio.get_running_loop().time() < deadline, app.events
                await asyncio.sleep(0.05)
            log = gw.output()

    a, b = app.events[0]["conn"], app.events[1 + QUEUE]["conn"]
    assert a != b
    assert [(e["type"], e["conn"], e.get("data")) for e in app.events] == [
        ("open", a, None),
        *[("message", a, m) for m in messages[:QUEUE]],
        ("open", b, None),
        ("close", a, None),
        ("close", b, None),
    ]
    assert f"webhook: event queue full ({QUEUE}); 1 message event(s) dropped" in log
