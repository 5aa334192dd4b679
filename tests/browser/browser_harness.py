"""The browser side of the end-to-end tests: a static server for the test page (its own
origin, distinct from the gateway's) and a wrapper around one Playwright page that
drives window.T in page.html and records what Chromium saw on the network and the
console, for failure messages."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page, Request, Response
from playwright.sync_api import Error as PlaywrightError

HERE = Path(__file__).resolve().parent
PAGE = HERE / "page.html"

# Every wait in a browser test is bounded by this many milliseconds.
WAIT_MS = 5_000
# sockjs-client's ``timeout`` option: how long it gives a transport to open before it
# gives up on it ("All transports failed" when it is the only one allowed).
TRANSPORT_TIMEOUT_MS = 3_000


@contextlib.contextmanager
def static_server(sockjs_client: Path) -> Iterator[str]:
    """Serve page.html at / and ``sockjs_client`` at /sockjs.min.js on 127.0.0.1 (a
    free port); yields the base URL."""
    files = {
        "/": (PAGE.read_bytes(), "text/html; charset=utf-8"),
        "/sockjs.min.js": (sockjs_client.read_bytes(), "application/javascript; charset=utf-8"),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            entry = files.get(self.path.split("?")[0])
            if self.path == "/favicon.ico":
                self.send_response(204)
                self.end_headers()
                return
            if entry is None:
                self.send_error(404)
                return
            body, content_type = entry
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="browser-page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def slow_uplink(port: int, piece: int = 4096, pause: float = 0.003) -> Iterator[int]:
    """A TCP relay on 127.0.0.1 to ``port`` that passes what the browser sends in
    ``piece``-byte writes ``pause`` seconds apart (answers go back untouched), so a
    request body reaches the server in several reads, as over a slow network or
    through a proxy. Yields the relay's port."""
    listener = socket.create_server(("127.0.0.1", 0))
    sockets: list[socket.socket] = [listener]
    lock = threading.Lock()

    def pump(source: socket.socket, sink: socket.socket, slow: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not slow:
                    sink.sendall(data)
                    continue
                for start in range(0, len(data), piece):
                    sink.sendall(data[start:start + piece])
                    time.sleep(pause)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed at the end
                return
            try:
                server = socket.create_connection(("127.0.0.1", port))
            except OSError:
                client.close()
                continue
            with lock:
                sockets.extend((client, server))
            for source, sink, slow in ((client, server, True), (server, client, False)):
                threading.Thread(target=pump, args=(source, sink, slow), daemon=True).start()

    threading.Thread(target=accept, name="slow-uplink", daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        with lock:
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


@dataclass
class Recorder:
    """What Chromium reported for one browser context: console lines, page errors and
    every request to the gateway with its outcome."""

    gateway: str
    lines: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)
    in_flight: set[Request] = field(default_factory=set)
    """Requests to the gateway that have neither finished nor failed."""

    def attach(self, context: BrowserContext) -> None:
        context.on("console", lambda m: self.add(f"console.{m.type}: {m.text}"))
        context.on("weberror", lambda e: self.add(f"page error: {e.error}"))
        context.on("request", self._request)
        context.on("response", self._response)
        context.on("requestfinished", self._finished)
        context.on("requestfailed", self._failed)

    def add(self, line: str) -> None:
        self.lines.append(f"{time.monotonic() - self.start:7.3f}s {line}")

    def reset(self) -> None:
        self.lines.clear()
        self.start = time.monotonic()

    def _ours(self, request: Request) -> bool:
        return request.url.startswith(self.gateway) or request.url.startswith(
            self.gateway.replace("http", "ws", 1))

    def _request(self, request: Request) -> None:
        if self._ours(request):
            self.in_flight.add(request)

    def _response(self, response: Response) -> None:
        if self._ours(response.request):
            headers = response.headers
            cors = headers.get("access-control-allow-origin")
            self.add(
                f"{response.request.method} {response.url} -> {response.status}"
                f" [{headers.get('content-type', '-')}]" + (f" ACAO={cors}" if cors else ""))

    def _finished(self, request: Request) -> None:
        self.in_flight.discard(request)

    def _failed(self, request: Request) -> None:
        self.in_flight.discard(request)
        if self._ours(request):
            self.add(f"{request.method} {request.url} FAILED: {request.failure}")

    def report(self, last: int = 40) -> str:
        lines = self.lines[-last:]
        return "\n  ".join([f"what Chromium saw (last {len(lines)}):", *lines])


class BrowserPage:
    """One page (in its own browser context, so with its own cookies) loaded from the
    static server and driving SockJS connections to ``gateway``."""

    def __init__(self, context: BrowserContext, page_url: str, gateway: str) -> None:
        self.context = context
        self.gateway = gateway
        self.recorder = Recorder(gateway)
        self.recorder.attach(context)
        self.page: Page = context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.page.goto(page_url + "/")
        self.page.wait_for_function("() => window.T && window.T.ready && typeof SockJS === 'function'")

    # -- driving --------------------------------------------------------------------------

    def call(self, function: str, *args: Any) -> Any:
        """``T.<function>(*args)`` in the page."""
        return self.page.evaluate(f"(args) => T.{function}(...args)", list(args))

    def wait(self, condition: str, *args: Any, what: str, timeout: int = WAIT_MS) -> None:
        """Wait until ``condition`` (a JavaScript expression over ``args`` and ``T``)
        holds; on timeout fail with ``what`` and the recorded evidence."""
        try:
            self.page.wait_for_function(f"(args) => {condition}", arg=list(args),
                                        timeout=timeout, polling=20)
        except PlaywrightError as exc:
            if "Timeout" not in str(exc):
                raise
            raise AssertionError(f"timed out after {timeout} ms waiting for {what}\n"
                                 f"  {self.recorder.report()}") from None

    def open(self, path: str, transport: str | None) -> str:
        """Open ``new SockJS(gateway + path, null, {transports: [transport]})`` and wait
        for it to open; returns its id in the page."""
        conn = self.call("open", self.gateway + path, transport, TRANSPORT_TIMEOUT_MS)
        self.wait("T.state(args[0]).opened || T.state(args[0]).close !== null", conn,
                  what=f"SockJS {transport} to {path} to open")
        state = self.state(conn)
        assert state["opened"], (f"SockJS {transport} to {path} closed before opening: "
                                 f"{state['close']}\n  {self.recorder.report()}")
        return conn

    def state(self, conn: str) -> dict[str, Any]:
        return self.call("state", conn)

    def wait_received(self, conn: str, count: int, timeout: int = WAIT_MS) -> None:
        self.wait("T.state(args[0]).received >= args[1] || T.state(args[0]).close !== null",
                  conn, count, what=f"{count} message(s) on {conn}", timeout=timeout)
        state = self.state(conn)
        assert state["received"] >= count, (
            f"{conn} closed after {state['received']} of {count} messages: {state['close']}\n"
            f"  {self.recorder.report()}")

    def wait_closed(self, conn: str) -> dict[str, Any]:
        self.wait("T.state(args[0]).close !== null", conn, what=f"{conn} to close")
        return self.state(conn)["close"]

    def report(self) -> str:
        return self.recorder.report()

    def frame_urls(self) -> list[str]:
        return [frame.url for frame in self.page.frames]

    def settle(self, timeout: float = 0.5) -> bool:
        """After closing every connection: wait until no request to the gateway is in
        flight. False if some still are (jsonp-polling, for one, cannot abort the
        script element of its last poll, which the server holds until its heartbeat);
        such leftovers would use up Chromium's six connections per host."""
        deadline = time.monotonic() + timeout
        while self.recorder.in_flight and time.monotonic() < deadline:
            self.page.wait_for_timeout(20)
        return not self.recorder.in_flight
