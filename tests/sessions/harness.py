"""Gateway nodes behind a plain round-robin nginx, for the shared-session tests and the
sessions benchmark.

:class:`Nginx` runs Debian's nginx with a configuration of its own in a temporary
directory (pid, logs and temp paths inside it), listening on a free port of 127.0.0.1,
in front of the given upstream ports: round-robin (the default balancing, no
stickiness) or, for comparison, ``hash $sockjs_session consistent`` (sticky by the
session part of the URL). Upstream connections are kept alive and HTTP/1.1;
``proxy_buffering off`` for the streaming transports. Every response carries
``X-Upstream`` (the port that served it) and the access log has one line per request:
``<upstream> <status> <uri>``. Never touches the system's nginx.

:func:`start_nodes` runs gateway nodes (``sockway serve``) on one broker with the
endpoints the tests use. Every wait is bounded; processes are stopped by their PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
for extra in (TESTS, TESTS / "brokers", TESTS / "browser"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from cluster import KEY, broker_server, http_get, wait_status  # noqa: E402

from support import ROOT, GatewayProcess, free_port, require_program  # noqa: E402

__all__ = ["ENGINES", "KEY", "Nginx", "RoundRobin", "broker_server", "node_ids", "round_robin", "start_nodes"]

ENGINES = ["redis", "nats"]

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format upstreams '$upstream_addr $status $request_uri';
    access_log {dir}/access.log upstreams;

    # WebSocket upgrades pass; other requests keep the upstream connection alive.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    # The session part of a SockJS URL: /<prefix>/<server>/<session>/<transport>.
    map $uri $sockjs_session {{
        ~^/.+/[^/.]+/(?<sid>[^/.]+)/[^/.]+$ $sid;
        default $request_uri;
    }}

    upstream sockway {{
        {balance}
{servers}
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 3m;  # a SockJS send of one max_message_size (1 MiB) message, escaped
        location / {{
            proxy_pass http://sockway;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


class Nginx:
    """An nginx of the tests in front of ``upstreams`` (ports on 127.0.0.1)."""

    def __init__(self, upstreams: list[int], *, sticky: bool = False) -> None:
        self.exe = require_program("nginx", "apt-get install nginx-light (or nginx)")
        self.dir = tempfile.mkdtemp(prefix="sockway-nginx-")
        self.port = free_port()
        self.upstreams = upstreams
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;" for p in upstreams)
        balance = "hash $sockjs_session consistent;" if sticky else "# round-robin"
        conf = NGINX_CONF.format(dir=self.dir, port=self.port, servers=servers, balance=balance)
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Nginx:
        self.proc = subprocess.Popen(
            [self.exe, "-c", self.conf, "-p", self.dir, "-e", os.path.join(self.dir, "error.log"),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.errors()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {timeout}s: {self.errors()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown of the master and its worker
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def errors(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.dir, "error.log"), errors="replace") as f:
            return f.read()[-3000:]
        return ""

    def log(self) -> list[tuple[str, int, str]]:
        """(upstream address, status, URI) of each request so far."""
        out = []
        with contextlib.suppress(OSError), open(os.path.join(self.dir, "access.log")) as f:
            for line in f:
                upstream, status, uri = [*line.rstrip("\n").split(" ", 2), "", ""][:3]
                out.append((upstream, int(status) if status.isdigit() else 0, uri))
        return out

    def upstreams_of(self, session_id: str) -> dict[str, int]:
        """Requests of a session per upstream (from the access log)."""
        counts: dict[str, int] = {}
        for upstream, _status, uri in self.log():
            if f"/{session_id}/" in uri:
                counts[upstream] = counts.get(upstream, 0) + 1
        return counts

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_config(broker_url: str) -> str:
    return f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1
allowed_origins = ["*"]
trusted_proxies = ["127.0.0.1"]

[api]
key = "{KEY}"

[broker]
url = "{broker_url}"

[[endpoint]]
prefix = "/echo"
mode = "echo"
response_limit = 4096

[[endpoint]]
prefix = "/ch"
mode = "channels"
response_limit = 4096

[[endpoint]]
prefix = "/short"
mode = "echo"
disconnect_delay = 1.0
heartbeat_delay = 1.0

[[namespace]]
name = ""
subscribe = "open"
publish = "open"
"""


def start_node(broker_url: str, port: int | None = None) -> GatewayProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, prefix="sockway-node-") as f:
        f.write(node_config(broker_url))
    port = port or free_port()
    proc = GatewayProcess(["serve", "--config", f.name, "--port", str(port)], port,
                          {"SOCKWAY_NO_UVLOOP": ""}, ROOT)
    proc.config_path = f.name  # type: ignore[attr-defined]
    try:
        proc.wait_ready()
        wait_status(proc, 200)
    except BaseException:
        stop_node(proc)
        raise
    return proc


def stop_node(proc: GatewayProcess) -> None:
    proc.stop()
    with contextlib.suppress(OSError):
        os.unlink(proc.config_path)  # type: ignore[attr-defined]


@contextlib.contextmanager
def start_nodes(broker_url: str, count: int = 2) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    try:
        for _ in range(count):
            started.append(start_node(broker_url))
        yield started
    finally:
        for proc in started:
            stop_node(proc)


def node_ids(nodes: list[GatewayProcess]) -> dict[str, str]:
    """``127.0.0.1:<port>`` (as nginx logs it) -> node id."""
    return {f"127.0.0.1:{n.port}": http_get(n.url + "/sockway/health")[1]["node"] for n in nodes}


@dataclass
class RoundRobin:
    engine: str
    broker_url: str
    nodes: list[GatewayProcess]
    nginx: Nginx
    ids: dict[str, str]
    """Upstream address (as nginx logs it) -> node id."""

    @property
    def url(self) -> str:
        return self.nginx.url

    def node_at(self, upstream: str) -> GatewayProcess:
        return next(n for n in self.nodes if upstream.endswith(f":{n.port}"))


@contextlib.contextmanager
def round_robin(engine: str, options: str = "", *, sticky: bool = False) -> Iterator[RoundRobin]:
    """A broker of ``engine`` ("memory": none, each node on its own memory broker), two
    nodes on it (``options``: the broker URL's query string) and nginx in front."""
    with broker_server(engine) as server:
        url = (server.url if server is not None else "memory://") + options
        with start_nodes(url) as nodes, Nginx([n.port for n in nodes], sticky=sticky) as nginx:
            yield RoundRobin(engine, url, nodes, nginx, node_ids(nodes))
