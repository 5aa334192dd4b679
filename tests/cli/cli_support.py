"""Helpers for the tests of the debugging tools (``sockway cat``, ``publish``, ``tail``):
the CLI run as a real process (to its end, or in the background with its output read
line by line), on a pseudo-terminal for interactive mode, and small clients to watch
what the tools did. Every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from websockets.sync.client import connect

from support import ROOT, GatewayProcess, config_gateway, free_port, require_program, wait_tcp

SOCKWAY = [sys.executable, "-m", "sockway"]
T = 10.0  # seconds: the default bound of every wait
API_KEY = "cli-test-key"
JWT_SECRET = "cli-test-secret-0123456789abcdef0123"
ALLOWED_ORIGIN = "https://app.example"


def cli(*args: str, input: str | None = None, timeout: float = 30.0,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """``sockway ARGS`` to its end (bounded), stdin from ``input`` (empty if None)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([*SOCKWAY, *args], input=input or "", capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


class Background:
    """``sockway ARGS`` running on its own; stdout read line by line (bounded waits).
    Stopped by its PID."""

    def __init__(self, *args: str, stdin: Any = subprocess.DEVNULL, env: dict | None = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen([*SOCKWAY, *args], stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_text = ""
        self._out = threading.Thread(target=self._pump_stdout, daemon=True)
        self._err = threading.Thread(target=self._pump_stderr, daemon=True)
        self._out.start()
        self._err.start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_text += line

    def line(self, timeout: float = T) -> str | None:
        """The next stdout line; None at the end of output; TimeoutError if none comes."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output within {timeout}s; stderr: {self.stderr_text!r}") from None

    def has_line(self) -> bool:
        return not self._lines.empty()

    def json_lines(self, count: int, timeout: float = T) -> list[dict]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < count:
            line = self.line(max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"output ended after {out!r}; stderr: {self.stderr_text!r}")
            out.append(json.loads(line))
        return out

    def wait(self, timeout: float = T) -> int:
        """The exit status (the process must end within ``timeout``)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"sockway did not exit within {timeout}s; stderr: {self.stderr_text!r}") from None
        self._out.join(5)
        self._err.join(5)
        return code

    def rest(self) -> list[str]:
        """Every stdout line not read yet (after the process ended)."""
        out = []
        while True:
            try:
                line = self._lines.get(timeout=5)
            except queue.Empty:
                return out
            if line is None:
                return out
            out.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def background(*args: str, **kwargs: Any) -> Iterator[Background]:
    proc = Background(*args, **kwargs)
    try:
        yield proc
    finally:
        proc.stop()


class PtySession:
    """``sockway ARGS`` on a pseudo-terminal (stdin, stdout and stderr), as a person at
    a terminal runs it: readline is active, the prompt is shown."""

    def __init__(self, *args: str, home: Path) -> None:
        self.master, slave = pty.openpty()
        env = dict(os.environ, HOME=str(home), TERM="xterm", INPUTRC="/dev/null", COLUMNS="200",
                   LINES="50")
        env.pop("PYTHONSTARTUP", None)
        # A session of its own whose controlling terminal is the pty, so that Ctrl-C
        # typed there is a SIGINT for it, as at a real terminal.
        self.proc = subprocess.Popen([*SOCKWAY, *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=env, cwd=ROOT, start_new_session=True, preexec_fn=_take_terminal)
        os.close(slave)
        self.output = b""
        self.pos = 0  # how far expect() has matched

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the process closed the terminal
            return False
        if not data:
            return False
        self.output += data
        return True

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def expect(self, pattern: str, timeout: float = T) -> re.Match:
        """Wait until ``pattern`` (a regular expression) appears after the last match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.text, self.pos)
            if match:
                self.pos = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.1)) and self.proc.poll() is not None):
                if not (match := regex.search(self.text, self.pos)):
                    raise AssertionError(f"{pattern!r} not seen within {timeout}s; the terminal showed:\n"
                                         f"{self.text!r}")
                self.pos = match.end()
                return match

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def line(self, text: str) -> None:
        """Type ``text`` and press Enter."""
        self.send(text + "\r")

    def wait(self, timeout: float = T) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        if self.proc.poll() is None:
            self.close()
            raise AssertionError(f"sockway cat did not exit within {timeout}s; the terminal showed:\n{self.text!r}")
        while self._read(0.05) and time.monotonic() < deadline + 1:
            pass  # what was written just before the exit
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _take_terminal() -> None:
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@contextlib.contextmanager
def pty_session(*args: str, home: Path) -> Iterator[PtySession]:
    session = PtySession(*args, home=home)
    try:
        yield session
    finally:
        session.close()


# -- the gateway -------------------------------------------------------------------------------


@dataclass
class CliGateway:
    proc: GatewayProcess
    sub: str  # ZeroMQ SUB address (PUB-connect here)
    pull: str  # ZeroMQ PULL address (PUSH-connect here)
    push: str | None = None  # ZeroMQ PUSH address (events; PULL-connect here)

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def ws(self) -> str:
        return self.proc.ws_url


GATEWAY_TOML = """
[server]
allowed_origins = ["{origin}"]
shutdown_timeout = 1

[api]
key = "{key}"

[auth]
jwt_secret = "{secret}"

[zeromq]
sub = "{sub}"
pull = "{pull}"
default = "endpoint:/plain"
{push_line}

[[namespace]]
name = ""
subscribe = "open"
publish = "open"
history_size = 50
history_ttl = 3600

[[namespace]]
name = "room"
subscribe = "open"
publish = "open"
presence = true
join_leave = true

[[endpoint]]
prefix = "/echo"
mode = "echo"

[[endpoint]]
prefix = "/chat"
mode = "broadcast"
history = 5

[[endpoint]]
prefix = "/quiet"
mode = "broadcast"

[[endpoint]]
prefix = "/plain"
mode = "broadcast"

[[endpoint]]
prefix = "/live"
mode = "channels"

[[endpoint]]
prefix = "/secure"
mode = "echo"
anonymous = false

[[endpoint]]
prefix = "/proto"
mode = "echo"
subprotocols = ["chat.v2", "chat.v1"]

[[endpoint]]
prefix = "/app"
mode = "app"
"""


@contextlib.contextmanager
def cli_gateway(push: bool = False) -> Iterator[CliGateway]:
    """A gateway with an endpoint of every kind the tools talk to, an API key, a JWT
    secret, ZeroMQ SUB and PULL sockets (and a PUSH socket for events with ``push``)."""
    sub, pull, events = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    toml = GATEWAY_TOML.format(origin=ALLOWED_ORIGIN, key=API_KEY, secret=JWT_SECRET, sub=sub, pull=pull,
                               push_line=f'push = "{events}"' if push else "")
    with config_gateway(toml) as proc:
        for address in (sub, pull, *([events] if push else [])):
            wait_tcp(int(address.rsplit(":", 1)[1]))
        yield CliGateway(proc, sub, pull, events if push else None)


@contextlib.contextmanager
def broker_gateway(engine: str, store: Path, query: str = "") -> Iterator[tuple[CliGateway, str]]:
    """A gateway on the Redis or NATS broker (a redis-server or nats-server -js of its own
    on a free port; NATS keeps its store in ``store``) and the broker URL, with a prefix
    of its own and ``query`` added (``&events=on``)."""
    port = free_port()
    prefix = f"cli{os.urandom(3).hex()}"
    if engine == "redis":
        server = require_program("redis-server", "apt-get install redis-server")
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        url = f"redis://127.0.0.1:{port}/0?prefix={prefix}{query}"
    else:
        server = require_program("nats-server", "apt-get install nats-server")
        args = [server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
        url = f"nats://127.0.0.1:{port}?prefix={prefix}{query}"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(port)
        sub, pull = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
        toml = GATEWAY_TOML.format(origin="http://x", key=API_KEY, secret=JWT_SECRET, sub=sub, pull=pull,
                                   push_line="") + f'\n[broker]\nurl = "{url}"\n'
        with config_gateway(toml) as proc_gw:
            yield CliGateway(proc_gw, sub, pull), url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def token(sub: str = "alice", ttl: int = 300, secret: str = JWT_SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl}, secret, algorithm="HS256")


def api(gw: CliGateway, op: str, **fields: Any) -> dict:
    from sockway.app import Client

    return Client(gw.url, API_KEY, timeout=T).command(op, **fields)


def connections(gw: CliGateway, endpoint: str) -> list[dict]:
    import urllib.request

    request = urllib.request.Request(gw.url + "/admin/api/connections", headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(request, timeout=T) as response:
        found = json.loads(response.read())["result"]["connections"]
    return [c for c in found if c["endpoint"] == endpoint]


def wait_connection(gw: CliGateway, endpoint: str, timeout: float = T) -> dict:
    """The one connection on ``endpoint`` (waits for it to appear)."""
    deadline = time.monotonic() + timeout
    while True:
        found = connections(gw, endpoint)
        if len(found) == 1:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"expected one connection on {endpoint}, found {found!r}")
        time.sleep(0.05)


# -- small clients ----------------------------------------------------------------------------


class WsClient:
    """A raw WebSocket client whose reads are bounded."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(url, open_timeout=T, close_timeout=T, ping_interval=None, max_queue=None, **kwargs))

    def recv(self, timeout: float = T) -> str | bytes:
        return self.ws.recv(timeout=timeout)

    def send(self, data: str | bytes) -> None:
        self.ws.send(data)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChannelClient(WsClient):
    """A channels-mode connection (``/live/websocket``): ``conn`` is its id."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        hello = json.loads(self.recv())
        assert hello["type"] == "connected", hello
        self.conn = hello["conn"]
        self._ids = 0

    def subscribe(self, channel: str) -> dict:
        self._ids += 1
        self.send(json.dumps({"op": "subscribe", "channel": channel, "id": self._ids}))
        reply = self.next_frame(lambda f: f.get("type") == "reply" and f.get("id") == self._ids)
        assert "result" in reply, reply
        return reply["result"]

    def next_frame(self, match, timeout: float = T) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching frame")
            frame = json.loads(self.recv(left))
            if match(frame):
                return frame

    def messages(self, count: int, timeout: float = T) -> list[dict]:
        return [self.next_frame(lambda f: f.get("type") == "message", timeout) for _ in range(count)]
