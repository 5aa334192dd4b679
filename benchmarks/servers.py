"""The servers under test: sockway and its peers, each a process the runner starts on a
free 127.0.0.1 port, waits for, and stops by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BENCH_DIR", "ROOT", "SERVERS", "ServerError", "ServerProcess", "ServerSpec", "node_binary",
           "python_binary", "running"]

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


class ServerError(RuntimeError):
    """A server did not start, died, or would not stop."""


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise ServerError("node not found: the load generator and the peers need Node.js (>= 18)")
    return node


def python_binary() -> str:
    """The project's virtual environment, where sockway is installed."""
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server: its name in the results, the transports it is measured
    on, its command line and the URL path that answers 200 once it is ready."""

    name: str
    transports: tuple[str, ...]
    health: str
    kind: str  # "sockway", "peer" or "calibration"

    def command(self, port: int, messages: int, size: int, config: Path | None = None) -> list[str]:
        """``config``: where sockway's configuration file goes (written here)."""
        if self.name == "sockway":
            assert config is not None
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(SOCKWAY_CONFIG)
            return [python_binary(), "-m", "sockway", "serve", "--port", str(port), "--config", str(config),
                    "--log-level", "warning"]
        script = {
            "ws": BENCH_DIR / "peers" / "ws_server.js",
            "sockjs-node": BENCH_DIR / "peers" / "sockjs_server.js",
            "socket.io": BENCH_DIR / "peers" / "socketio_server.js",
            "blaster": BENCH_DIR / "gen" / "blaster.js",
        }[self.name]
        command = [node_binary(), str(script), "--port", str(port)]
        if self.name == "blaster":
            command += ["--messages", str(messages), "--size", str(size)]
        return command


SUBPROTOCOL = "bench.v1"
"""The subprotocol every server under test offers on raw WebSocket (sockway's endpoint
``subprotocols``, ws's ``handleProtocols``); only the connection storm's clients ask for it."""

SOCKWAY_CONFIG = f"""
# sockway's defaults (origin: same origin only; limits; permessage-deflate negotiated when
# offered), two endpoints, and a subprotocol to choose when a client offers it.
[endpoint_defaults]
subprotocols = ["{SUBPROTOCOL}"]

[[endpoint]]
prefix = "/broadcast"
mode = "broadcast"

[[endpoint]]
prefix = "/echo"
mode = "echo"
"""
"""What ``sockway serve --config`` gets in the fan-out, echo, idle, steady and storm
scenarios: the same as ``--endpoint /broadcast=broadcast --endpoint /echo=echo``, plus the
subprotocol (which changes nothing for a client that does not offer it)."""

SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("sockway", ("raw", "sockjs"), "/sockway/health", "sockway"),
        ServerSpec("ws", ("raw",), "/health", "peer"),
        ServerSpec("sockjs-node", ("sockjs",), "/health", "peer"),
        ServerSpec("socket.io", ("socketio",), "/health", "peer"),
        ServerSpec("blaster", ("raw", "sockjs"), "/health", "calibration"),
    )
}


class ServerProcess:
    """One running server. Its output goes to ``log_path``; quoted in errors."""

    def __init__(self, spec: ServerSpec, log_path: Path, messages: int, size: int,
                 pythonpath: Path | None = None, port: int | None = None) -> None:
        self.spec = spec
        self.port = free_port() if port is None else port
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop(); a restart appends
        env = dict(os.environ)
        if pythonpath is not None and spec.name == "sockway":
            env["PYTHONPATH"] = str(pythonpath) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            spec.command(self.port, messages, size, log_path.with_suffix(".toml")),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=ROOT, start_new_session=True,  # Ctrl-C reaches the runner, which stops us
        )
        self.pid = self.proc.pid

    def output_tail(self, lines: int = 15) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died_message(self) -> str:
        tail = self.output_tail()
        return (f"{self.spec.name} (pid {self.pid}) exited with status {self.proc.returncode}"
                + (f"; its last output:\n{tail}" if tail else ""))

    def wait_ready(self, timeout: float) -> float:
        """Poll the health URL until it answers 200; returns the seconds it took."""
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.port}{self.spec.health}"
        while True:
            if not self.alive():
                raise ServerError(self.died_message())
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                raise ServerError(f"{self.spec.name} (pid {self.pid}) did not answer {url} within "
                                  f"{timeout:.0f}s; its last output:\n{self.output_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; only this PID."""
        try:
            if self.proc.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    self.proc.wait(5)
        finally:
            self._log.close()


@contextlib.contextmanager
def running(spec: ServerSpec, log_path: Path, *, messages: int, size: int,
            ready_timeout: float = 30.0, pythonpath: Path | None = None,
            stop_timeout: float = 10.0) -> Iterator[ServerProcess]:
    """``stop_timeout``: seconds between SIGTERM and SIGKILL (a saturated Node server works
    through its backlog before it sees the signal)."""
    server = ServerProcess(spec, log_path, messages, size, pythonpath)
    try:
        server.wait_ready(ready_timeout)
        yield server
    finally:
        server.stop(stop_timeout)
