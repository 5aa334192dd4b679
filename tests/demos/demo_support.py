"""The gateway of demos/sockway.toml (what ``make demo`` runs) on free ports, and the
helpers of the demo tests: pages in headless Chromium, commands copied from the pages
themselves, a TCP line client for the tunnel. Every wait is bounded."""

from __future__ import annotations

import contextlib
import html
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support import ROOT, GatewayProcess, free_port, wait_tcp

DEMOS = ROOT / "demos"
WWW = DEMOS / "www"
CONFIG = DEMOS / "sockway.toml"
T = 10.0  # seconds: the default bound of every wait
WAIT_MS = int(T * 1000)
# The ports and addresses written in demos/sockway.toml and in the pages' instructions.
DEMO_PORT = 8080
DEMO_SUB = "tcp://127.0.0.1:5555"
DEMO_PULL = "tcp://127.0.0.1:5557"
DEMO_TUNNEL = "127.0.0.1:7070"

@dataclass
class DemoGateway:
    proc: GatewayProcess
    port: int
    sub: str
    pull: str
    tunnel_port: int
    key: str = "demo"

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def ws(self) -> str:
        return self.proc.ws_url

    @property
    def pull_port(self) -> int:
        return int(self.pull.rsplit(":", 1)[1])

    def localize(self, text: str) -> str:
        """A command from a page or the docs, pointed at this gateway instead of the
        ports of ``make demo`` (and at this interpreter's virtual environment)."""
        text = text.replace(f"127.0.0.1:{DEMO_PORT}", f"127.0.0.1:{self.port}")
        text = text.replace(DEMO_PULL, self.pull).replace(DEMO_SUB, self.sub)
        text = text.replace(DEMO_TUNNEL, f"127.0.0.1:{self.tunnel_port}")
        return text.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")


def demo_config_copy(tunnel_port: int) -> str:
    """demos/sockway.toml with the tunnel on ``tunnel_port`` (no environment variable
    sets it) and the static directory as an absolute path (the copy lives elsewhere).
    Everything else is the file as shipped."""
    text = CONFIG.read_text()
    shipped = tomllib.loads(text)
    assert shipped["server"]["static"] == "www"
    assert [t["listen"] for t in shipped["tunnel"]] == [DEMO_TUNNEL]
    copy = text.replace('static = "www"', f'static = "{WWW}"')
    copy = copy.replace(f'listen = "{DEMO_TUNNEL}"', f'listen = "127.0.0.1:{tunnel_port}"')
    changed = tomllib.loads(copy)
    assert changed["server"]["static"] == str(WWW)
    assert changed["tunnel"][0]["listen"] == f"127.0.0.1:{tunnel_port}"
    assert changed["endpoint"] == shipped["endpoint"] and changed["zeromq"] == shipped["zeromq"]
    return copy


@contextlib.contextmanager
def demo_gateway(env: dict[str, str] | None = None) -> Iterator[DemoGateway]:
    """``sockway serve --config demos/sockway.toml`` on free ports: HTTP and ZeroMQ
    through the environment variables a user would set, the tunnel through a copy of
    the file. ``env``: more settings, as ``VAR=value make demo`` would give them."""
    port, sub_port, pull_port, tunnel_port = (free_port() for _ in range(4))
    sub, pull = f"tcp://127.0.0.1:{sub_port}", f"tcp://127.0.0.1:{pull_port}"
    with tempfile.NamedTemporaryFile("w", prefix="sockway-demo-", suffix=".toml", delete=False) as f:
        f.write(demo_config_copy(tunnel_port))
    full_env = {"SOCKWAY_PORT": str(port), "SOCKWAY_ZEROMQ_SUB": sub, "SOCKWAY_ZEROMQ_PULL": pull, **(env or {})}
    proc = GatewayProcess(["serve", "--config", f.name], port, full_env)
    try:
        proc.wait_ready()
        for p in (sub_port, pull_port, tunnel_port):
            wait_tcp(p, T)
        yield DemoGateway(proc, port, sub, pull, tunnel_port)
    finally:
        proc.stop()
        os.unlink(f.name)


# -- what the pages tell users to run ------------------------------------------------------------


def page_commands(page: str) -> str:
    """The text of the page's ``<pre class="cmd">`` blocks, as a browser shows it."""
    source = (WWW / page).read_text()
    blocks = re.findall(r'<pre class="cmd">(.*?)</pre>', source, re.S)
    assert blocks, f"{page} has no <pre class=\"cmd\">"
    return "\n".join(html.unescape(b) for b in blocks)


def command_lines(text: str) -> list[str]:
    """Shell commands of a block: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def run_shell(command: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


# -- the tunnel's TCP side -----------------------------------------------------------------------


class LineClient:
    """What ``nc 127.0.0.1 7070`` is: lines in and out, reads bounded."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        self.buffer = b""
        host, port = self.sock.getsockname()[:2]
        self.local = f"{host}:{port}"

    def send_line(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def line(self, timeout: float = T) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line within {timeout}s (have {self.buffer!r})")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed by the gateway (have {self.buffer!r})")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def until(self, predicate, timeout: float = T) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                line = self.line(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"no matching line within {timeout}s; got {seen!r}") from None
            if predicate(line):
                return line
            seen.append(line)

    def close(self) -> None:
        self.sock.close()
