"""Pieces of the sockway.js tests: headless Chromium in a thread of its own, a static
server for the test page, a wrapper around one page that drives window.H in
helper_page.html, the gateway's HTTP API and a small application behind the gateway.

Chromium runs in its own thread because Playwright's sync API allows one instance per
thread: tests/browser keeps one open in the main thread for the whole session, and
these tests must not depend on which directory pytest visits first.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser
from playwright.sync_api import Error as PlaywrightError

from support import ChromiumThread

HERE = Path(__file__).resolve().parent
PAGE = HERE / "helper_page.html"

# Every wait in the page is bounded by this many milliseconds.
WAIT_MS = 5_000

API_KEY = "sockway-js-test-key"
JWT_SECRET = "sockway-js-test-secret-of-at-least-32-bytes"
SHORT_HISTORY = 5
"""history_size of the "short" namespace."""


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """Serve helper_page.html at / on 127.0.0.1 (a free port); yields the base URL."""
    body = PAGE.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="sockway-js-page", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def describe(name: str, snapshot: dict) -> str:
    """A client's snapshot, one line per event; messages as their offsets ("r" marks
    the recovered ones)."""
    t0 = snapshot["events"][0]["t"] if snapshot["events"] else 0
    lines = [f"client {name}: {snapshot['state']} conn={snapshot['conn']} "
             f"transport={snapshot['transport']} attempts={snapshot['attempts']}"]
    lines += [f"  +{e['t'] - t0}ms {e['event']} {json.dumps(e['ctx'])[:300]}" for e in snapshot["events"]]
    for channel, sub in snapshot["subs"].items():
        lines.append(f"  subscription {channel}: {sub['state']} offset={sub['offset']} epoch={sub['epoch']}")
        lines += [f"    +{e['t'] - t0}ms {e['event']} {json.dumps(e['ctx'])[:300]}" for e in sub["events"]]
        offsets = [("r" if m.get("recovered") else "") + str(m.get("offset")) for m in sub["messages"]]
        lines.append(f"    {len(offsets)} messages, offsets: {' '.join(offsets)}")
    return "\n".join(lines)


class HelperPage:
    """One page in a fresh browser context, with sockway.js loaded from ``gateway``."""

    def __init__(self, chromium: ChromiumThread, page_url: str, gateway: str, load: str = "classic") -> None:
        self.chromium = chromium
        self.gateway = gateway
        self.lines: list[str] = []

        def setup(browser: Browser):
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("console", lambda m: self.lines.append(f"console.{m.type}: {m.text}"))
            page.on("pageerror", lambda e: self.lines.append(f"page error: {e}"))
            page.goto(f"{page_url}/?gw={gateway}&load={load}")
            try:
                page.wait_for_function("() => window.H.ready || window.H.loadError")
            except PlaywrightError as exc:
                raise AssertionError(f"the page did not load sockway.js: {exc}\n{self.report()}") from None
            error = page.evaluate("() => window.H.loadError || null")
            if error:
                raise AssertionError(f"the page did not load sockway.js: {error}\n{self.report()}")
            return context, page

        self.context, self.page = chromium.run(setup)

    def close(self) -> None:
        self.chromium.run(lambda _: self.context.close())

    # -- driving ----------------------------------------------------------------------

    def call(self, function: str, *args: Any) -> Any:
        """``await H.<function>(...args)`` in the page."""
        return self.chromium.run(
            lambda _: self.page.evaluate(f"async (args) => H.{function}(...args)", list(args)))

    def js(self, expression: str) -> Any:
        return self.chromium.run(lambda _: self.page.evaluate(expression))

    def wait(self, condition: str, *args: Any, what: str, client: str | None = None,
             timeout: int = WAIT_MS) -> None:
        """Wait until ``condition`` (JavaScript over ``args`` and ``H``) holds; on
        timeout fail with ``what``, the client's recorded events and the console."""

        def waiting(_: Browser) -> bool:
            try:
                self.page.wait_for_function(f"(args) => {condition}", arg=list(args),
                                            timeout=timeout, polling=20)
                return True
            except PlaywrightError as exc:
                if "Timeout" not in str(exc):
                    raise
                return False

        if not self.chromium.run(waiting, timeout=timeout / 1000 + 30):
            raise AssertionError(f"timed out after {timeout} ms waiting for {what}\n"
                                 f"{self.report(client)}")

    def report(self, client: str | None = None) -> str:
        parts = []
        if client is not None:
            with contextlib.suppress(Exception):
                parts.append(describe(client, self.snapshot(client)))
        parts.append("console:\n  " + "\n  ".join(self.lines[-30:]))
        return "\n".join(parts)

    # -- the clients in the page ------------------------------------------------------

    def client(self, name: str, path: str, **options: Any) -> None:
        self.call("client", name, path, options)

    def connect(self, name: str, path: str = "/live", **options: Any) -> dict:
        """Create client ``name``, connect it and wait for its ``connected`` event."""
        self.client(name, path, **options)
        self.call("connect", name)
        return self.wait_connected(name)

    def wait_connected(self, name: str, count: int = 1) -> dict:
        self.wait("H.clients[args[0]].events.filter((e) => e.event === 'connected').length >= args[1]",
                  name, count, what=f"{name} to connect ({count})", client=name)
        return self.events(name, "connected")[count - 1]

    def snapshot(self, name: str) -> dict:
        return self.call("snapshot", name)

    def events(self, name: str, event: str, channel: str | None = None) -> list[dict]:
        snapshot = self.snapshot(name)
        events = snapshot["events"] if channel is None else snapshot["subs"][channel]["events"]
        return [e["ctx"] for e in events if e["event"] == event]

    def subscribe(self, name: str, channel: str, **options: Any) -> dict:
        """Subscribe and wait for the ``subscribed`` event; returns its context."""
        self.call("subscribe", name, channel, options)
        return self.wait_sub_event(name, channel, "subscribed")

    def wait_sub_event(self, name: str, channel: str, event: str, count: int = 1) -> dict:
        self.wait("H.clients[args[0]].subs[args[1]].events.filter((e) => e.event === args[2]).length"
                  " >= args[3]", name, channel, event, count,
                  what=f"{name} {channel}: {count} {event} event(s)", client=name)
        return self.events(name, event, channel)[count - 1]

    def messages(self, name: str, channel: str) -> list[dict]:
        return self.snapshot(name)["subs"][channel]["messages"]

    def wait_messages(self, name: str, channel: str, count: int, timeout: int = WAIT_MS) -> list[dict]:
        self.wait("H.clients[args[0]].subs[args[1]].messages.length >= args[2]", name, channel, count,
                  what=f"{count} message(s) on {channel} for {name}", client=name, timeout=timeout)
        return self.messages(name, channel)

    def request(self, name: str, method: str, *args: Any, channel: str | None = None) -> dict:
        """``client.<method>(...args)`` (or the subscription's, with ``channel``):
        ``{"ok": result}`` or ``{"error": {"code": ..., "message": ...}}``."""
        return self.call("request", name, channel, method, list(args))

    def ok(self, name: str, method: str, *args: Any, channel: str | None = None) -> Any:
        outcome = self.request(name, method, *args, channel=channel)
        assert "ok" in outcome, f"{method} failed: {outcome}\n{self.report(name)}"
        return outcome["ok"]


class Api:
    """The gateway's HTTP API, as the application calls it."""

    def __init__(self, base: str) -> None:
        self.base = base

    def __call__(self, op: str, **body: Any) -> dict:
        request = urllib.request.Request(
            f"{self.base}/api/{op}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())["result"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"/api/{op} {body}: {exc.code} {exc.read()!r}") from None

    def publish_all(self, channel: str, items: list, pause: float = 0.0) -> list[int]:
        offsets = []
        for item in items:
            offsets.append(self("publish", channel=channel, data=item)["offset"])
            if pause:
                time.sleep(pause)
        return offsets


class Application:
    """The application behind the gateway: it receives event batches by webhook and
    answers every ``message`` event with a ``send`` command echoing it to its sender."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                events = json.loads(body)["events"]
                app.events.extend(events)
                commands = [{"op": "send", "conn": e["conn"], "data": {"echo": e["data"]}}
                            for e in events if e["type"] == "message"]
                answer = json.dumps({"commands": commands}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, name="sockway-js-app",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
