"""Helpers for the tests of examples/: the programs they need, processes stopped by PID,
and real clients (raw WebSocket, SockJS over WebSocket, a channels-mode subscriber) whose
every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from support import ROOT, GatewayProcess, free_port, gateway, wait_tcp

EXAMPLES = ROOT / "examples"
PYTHON = sys.executable
T = 5.0  # seconds: the default bound of every wait


def run(args: list[str], env: dict | None = None, timeout: float = 20.0,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a program to its end (bounded), its output captured as text."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(args, env=full_env, cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout)


class Program:
    """A long-running program (a PHP server, a worker), stopped by its PID."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log = tempfile.NamedTemporaryFile(prefix="sockway-example-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=cwd or ROOT)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = T) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def remove_log(self) -> None:
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


@contextlib.contextmanager
def program(args: list[str], env: dict | None = None, cwd: Path | None = None) -> Iterator[Program]:
    proc = Program(args, env, cwd)
    try:
        yield proc
    finally:
        proc.stop()
        proc.remove_log()


def wait_http(url: str, timeout: float = T) -> None:
    """Until ``url`` answers a GET with 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.05)


# -- the gateway of examples/sockway.toml -------------------------------------------------


@dataclass
class ExamplesGateway:
    proc: GatewayProcess
    key: str
    sub: str
    pull: str
    push: str

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def ws_url(self) -> str:
        return self.proc.ws_url


@contextlib.contextmanager
def examples_gateway() -> Iterator[ExamplesGateway]:
    """examples/sockway.toml as shipped, on free ports (HTTP and ZeroMQ) chosen through
    the environment overrides a user would use, with a fresh API key."""
    ports = {name: free_port() for name in ("sub", "pull", "push")}
    addresses = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
    key = secrets.token_hex(16)
    env = {"SOCKWAY_API_KEY": key, **{f"SOCKWAY_ZEROMQ_{n.upper()}": a for n, a in addresses.items()}}
    with gateway(["serve", "--config", str(EXAMPLES / "sockway.toml")], env=env) as proc:
        # The health check answers once HTTP is up; the ZeroMQ sockets are bound right after.
        for port in ports.values():
            wait_tcp(port, T)
        yield ExamplesGateway(proc, key, **addresses)


# -- clients -------------------------------------------------------------------------------


class WsClient:
    """A raw WebSocket client (``/prefix/websocket``) whose reads are bounded."""

    def __init__(self, url: str) -> None:
        # max_queue=None: the reader thread keeps reading (and answering pings) however
        # many messages wait for the test.
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(url, open_timeout=T, close_timeout=T, ping_interval=None, max_queue=None))

    def recv(self, timeout: float = T) -> str | bytes:
        return self.ws.recv(timeout=timeout)

    def send(self, data: str | bytes) -> None:
        self.ws.send(data)

    def collect(self, seconds: float) -> list:
        """Everything received during ``seconds``."""
        out: list = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.recv(left))
            except TimeoutError:
                break
        return out

    def until(self, match: Callable[[Any], bool], timeout: float = T) -> tuple[Any, list]:
        """Read until a message ``match``es: (that message, those before it)."""
        before: list = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message within {timeout}s; received: {before!r}")
            try:
                message = self.recv(left)
            except TimeoutError:
                continue
            if match(message):
                return message, before
            before.append(message)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SockJSClient(WsClient):
    """SockJS over its WebSocket transport (``/prefix/<server>/<session>/websocket``):
    frames ``o``, ``h``, ``a[...]`` and ``c[code, reason]``; messages are unpacked."""

    def __init__(self, base_ws_url: str, prefix: str, query: str = "") -> None:
        session = secrets.token_hex(4)
        super().__init__(f"{base_ws_url}{prefix}/000/{session}/websocket{query}")
        self.pending: list[str] = []
        self.closed_with: list | None = None
        frame = self.ws.recv(timeout=T)
        assert frame == "o", f"expected the SockJS open frame, got {frame!r}"

    def recv(self, timeout: float = T) -> str:
        deadline = time.monotonic() + timeout
        while not self.pending:
            if self.closed_with is not None:
                raise ConnectionError(f"SockJS session closed: {self.closed_with}")
            frame = self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            if frame.startswith("a"):
                self.pending.extend(json.loads(frame[1:]))
            elif frame.startswith("c"):
                self.closed_with = json.loads(frame[1:])
        return self.pending.pop(0)

    def send(self, data: str | bytes) -> None:
        self.ws.send(json.dumps([data]))


class ChannelsClient(WsClient):
    """A client of a channels-mode endpoint, subscribed to ``channel``."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url)
        connected = json.loads(self.recv())
        assert connected["type"] == "connected", connected
        self.send(json.dumps({"op": "subscribe", "channel": channel, "id": 1}))
        reply = json.loads(self.recv())
        assert reply.get("type") == "reply" and "result" in reply, reply


def chat_listener(gw: ExamplesGateway) -> WsClient:
    """A client of the /chat broadcast endpoint, already past the replayed history and
    known to be subscribed (its own line came back)."""
    client = WsClient(gw.ws_url + "/chat/websocket")
    marker = "ready-" + secrets.token_hex(4)
    client.send(marker)
    client.until(lambda m: m == marker)
    return client


def token(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}"
