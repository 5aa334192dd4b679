"""Helpers shared by the test suite: running real gateway processes, free ports, and
the rule for tests that need an outside program (skip on a developer machine with a
reason, fail under CI=true)."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_LOGS: list[str] = []


@atexit.register
def _remove_logs() -> None:
    """Gateway logs are read by the tests (and shown when one fails); they go when the
    test run ends, unless SOCKWAY_KEEP_TEST_LOGS is set."""
    if os.environ.get("SOCKWAY_KEEP_TEST_LOGS"):
        return
    for path in _LOGS:
        with contextlib.suppress(OSError):
            os.unlink(path)


def require_program(name: str, hint: str) -> str:
    """Path of ``name``, or skip (fail under CI=true) with ``hint``."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: {hint}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_file(path: Path, hint: str) -> Path:
    """``path``, or skip (fail under CI=true) saying it is missing, with ``hint``."""
    if not path.is_file():
        message = f"{path} not found{hint}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """A real ``sockway`` process on 127.0.0.1."""

    def __init__(self, args: list[str], port: int, env: dict | None = None,
                 cwd: Path | None = None, preexec_fn=None) -> None:
        self.port = port
        self.args = args
        # Open for the life of the process: its output is read when a test fails.
        self.log = tempfile.NamedTemporaryFile(prefix="sockway-", suffix=".log", delete=False)  # noqa: SIM115
        _LOGS.append(self.log.name)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockway", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or ROOT,
            preexec_fn=preexec_fn,
        )
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sockway exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/sockway/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sockway did not start within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


_LOG_PROBLEM = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) "          # the text format: date time LEVEL
                          r"|\"level\": \"(ERROR|CRITICAL)\""       # the JSON format
                          r"|Traceback \(most recent call last\)", re.M)


def log_mark(proc: GatewayProcess) -> int:
    """Where the gateway's log ends now: pass it to :func:`assert_clean_log` to check
    only what comes after."""
    return len(proc.output())


def assert_clean_log(proc: GatewayProcess, since: int = 0) -> None:
    """The gateway is still running, and its log (from character ``since``) has no
    traceback and no ERROR or CRITICAL line (text or JSON log format): what a fuzzer
    checks after throwing its input at *this* gateway."""
    output = proc.output()
    assert proc.proc.poll() is None, f"the gateway exited with {proc.proc.returncode}:\n{output[-3000:]}"
    problem = _LOG_PROBLEM.search(output, since)
    assert problem is None, f"the gateway's log has a problem:\n{output[max(since, problem.start() - 1000):][:4000]}"


@contextlib.contextmanager
def gateway(args: list[str], env: dict | None = None, port: int | None = None,
            cwd: Path | None = None, preexec_fn=None) -> Iterator[GatewayProcess]:
    """Run ``sockway <args> --port <free port>`` for the duration of the block
    (``preexec_fn``: run in the child before sockway, e.g. to lower its limits)."""
    port = port or free_port()
    proc = GatewayProcess([*args, "--port", str(port)], port, env, cwd, preexec_fn)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def config_gateway(toml: str, env: dict | None = None, preexec_fn=None) -> Iterator[GatewayProcess]:
    """Run ``sockway serve`` with a TOML configuration given as text."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml)
    try:
        with gateway(["serve", "--config", f.name], env=env, preexec_fn=preexec_fn) as proc:
            yield proc
    finally:
        os.unlink(f.name)


def wait_for(predicate, timeout: float) -> bool:
    """Poll ``predicate`` every 50 ms until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def drain(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server still sends before it ends the connection (or stays
    silent for ``timeout`` seconds); a reset ends it too."""
    data = b""
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def endpoint_connections(proc: GatewayProcess, prefix: str, timeout: float = 5.0) -> int:
    """Clients connected to an endpoint, from the gateway's health report."""
    import json

    with urllib.request.urlopen(proc.url + "/sockway/health", timeout=timeout) as r:
        count = json.load(r)["endpoints"][prefix]
    return count["connections"] if isinstance(count, dict) else count


def wait_tcp(port: int, timeout: float = 10.0) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s") from None
        time.sleep(0.05)


def require_php_zmq() -> str:
    """The php program with the zmq extension loaded, or skip (fail under CI=true)."""
    php = require_program("php", "apt-get install php-cli php-zmq")
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=30).stdout.split()
    if "zmq" not in modules:
        message = "php's zmq extension is not loaded: apt-get install php-zmq"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return php


# -- headless Chromium ------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Chromium flags: no GPU, QUIC or background traffic, and nothing that needs a sandbox
or a profile (Playwright gives every launch a fresh temporary profile)."""


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Headless Chromium through Playwright's sync API in this thread, for one test
    module at most: while that API is open in a thread, asyncio believes an event loop
    runs there, and other modules' asyncio.run() would fail (ChromiumThread, below,
    avoids that with a thread of its own)."""
    from playwright.sync_api import sync_playwright

    executable = require_program("chromium", "apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class ChromiumThread:
    """One headless Chromium driven through Playwright's sync API from a thread of its
    own (while that API is open in a thread, asyncio believes a loop runs there, and the
    tests use asyncio.run() in the main thread). ``run(fn)`` calls ``fn(browser)`` in
    that thread and returns its result or raises its exception, within ``run_timeout``
    seconds unless told otherwise."""

    def __init__(self, executable: str, name: str = "chromium", run_timeout: float = 60.0) -> None:
        import concurrent.futures
        import queue
        import threading

        self.run_timeout = run_timeout
        self._jobs: queue.Queue = queue.Queue()
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(executable, ready), name=name, daemon=True)
        self._thread.start()
        ready.result(timeout=60)

    def _main(self, executable: str, ready) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
                ready.set_result(None)
                try:
                    while (job := self._jobs.get()) is not None:
                        fn, future = job
                        if future.set_running_or_notify_cancel():
                            try:
                                future.set_result(fn(browser))
                            except BaseException as exc:
                                future.set_exception(exc)
                finally:
                    browser.close()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)

    def run(self, fn, timeout: float | None = None):
        import concurrent.futures

        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future.result(self.run_timeout if timeout is None else timeout)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(15)


# -- a legacy hixie-76 WebSocket (SockJS still speaks it) ----------------------------------

HIXIE_KEY1 = "4 @1  46546xW%0l 1 5"
HIXIE_KEY2 = "12998 5 Y3 1  .P00"
HIXIE_KEY3 = b"aaaaaaaa"


def hixie_answer(key1: str, key2: str, key3: bytes) -> bytes:
    """The 16-byte challenge answer (draft-hixie-thewebsocketprotocol-76 section 5.2),
    computed here independently of the server's code."""
    def number(key: str) -> int:
        return int("".join(c for c in key if c.isdigit())) // key.count(" ")
    return hashlib.md5(struct.pack(">II", number(key1), number(key2)) + key3).digest()


def hixie_connect(port: int, path: str, rcvbuf: int | None = None, timeout: float = 5.0) -> socket.socket:
    """A hixie-76 SockJS session, past the open frame."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    origin = f"http://127.0.0.1:{port}"
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
                  f"Upgrade: WebSocket\r\nOrigin: {origin}\r\nSec-WebSocket-Key1: {HIXIE_KEY1}\r\n"
                  f"Sec-WebSocket-Key2: {HIXIE_KEY2}\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(HIXIE_KEY3)
    expected = hixie_answer(HIXIE_KEY1, HIXIE_KEY2, HIXIE_KEY3) + b"\x00o\xff"
    while len(rest) < len(expected):
        chunk = sock.recv(4096)
        assert chunk, rest
        rest += chunk
    assert rest[:len(expected)] == expected
    return sock
