"""What SockJS sessions over HTTP cost behind a load balancer: one node, two nodes behind
a sticky nginx, two nodes behind a round-robin nginx relaying requests to each session's
owner (Redis or NATS). See docs/deployment.md, "Round-robin or sticky".

    .venv/bin/python -m benchmarks.sessions                 # every setup, about 3 minutes
    .venv/bin/python -m benchmarks.sessions --clients 20 --duration 5 --setups single,relay-redis

Each setup gets fresh processes on free 127.0.0.1 ports, all started here and stopped by
PID: redis-server / nats-server when it needs one, ``sockway serve`` nodes (uvloop) with an
echo endpoint, and Debian's nginx with a configuration of its own in a temporary
directory (upstream keepalive, HTTP/1.1, ``proxy_buffering off``). Setups:

* ``single``: one node (memory broker) behind nginx: the baseline.
* ``sticky``: two nodes (Redis, ``sessions=off``), nginx ``hash`` on the session id of
  the URL: every request of a session goes to the node that has it.
* ``relay-redis`` / ``relay-nats``: two nodes sharing sessions, nginx round-robin: about
  half of the requests land on the node that does not own the session and are relayed.

The load: ``--clients`` SockJS sessions at once (xhr-polling and xhr-streaming, the
``--transports``), each keeping one message in flight: send it (``xhr_send``), get the echo
(xhr-polling: the next poll; xhr-streaming: the open stream), send the next. After a
warm-up (``--warmup`` s) the round trips completed in ``--duration`` s are counted and each
one's latency recorded. The load generator (aiohttp on uvloop) runs on the same machine
as nginx, the nodes and the broker, so the numbers compare setups with each other; they
are not a capacity figure. One JSON line per measurement on stdout, then a table of the
medians over ``--rounds`` rounds (setups take turns within each round).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("single", "sticky", "relay-redis", "relay-nats")
TRANSPORTS = ("xhr-polling", "xhr-streaming")

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    access_log off;
    map $uri $sockjs_session {{
        ~^/.+/[^/.]+/(?<sid>[^/.]+)/[^/.]+$ $sid;
        default $request_uri;
    }}
    upstream sockway {{
        {balance}
{servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location / {{
            proxy_pass http://sockway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_binary() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def program(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        raise SystemExit(f"{name} not found (apt-get install {name})")
    return path


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer {url} within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def broker(kind: str) -> Iterator[str]:
    """A broker of ``kind`` for the block; yields its URL."""
    if kind == "memory":
        yield "memory://"
        return
    port = free_port()
    scratch = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    if kind == "redis":
        command = [program("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"]
        url = f"redis://127.0.0.1:{port}/0"
    else:
        command = [program("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", scratch]
        url = f"nats://127.0.0.1:{port}"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, kind)
        yield url
    finally:
        stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def nodes(broker_url: str, count: int) -> Iterator[list[int]]:
    """``count`` sockway nodes on ``broker_url``; yields their ports."""
    procs: list[subprocess.Popen] = []
    files: list[str] = []
    ports: list[int] = []
    try:
        for _ in range(count):
            port = free_port()
            with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, prefix="bench-node-") as f:
                f.write(f'[server]\nlog_level = "warning"\n\n[broker]\nurl = "{broker_url}"\n\n'
                        '[[endpoint]]\nprefix = "/echo"\nmode = "echo"\n')
            files.append(f.name)
            proc = subprocess.Popen([python_binary(), "-m", "sockway", "serve", "--config", f.name,
                                     "--port", str(port)], cwd=ROOT)
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{port}/readyz", proc, "sockway")
            ports.append(port)
        yield ports
    finally:
        for proc in procs:
            stop(proc)
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(name)


@contextlib.contextmanager
def nginx(upstreams: list[int], sticky: bool) -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="bench-nginx-")
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstreams)
    balance = "hash $sockjs_session consistent;" if sticky else "# round-robin"
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=directory, port=port, servers=servers, balance=balance))
    proc = subprocess.Popen([program("nginx"), "-c", conf, "-p", directory, "-e",
                             os.path.join(directory, "error.log"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def setup(name: str) -> Iterator[str]:
    """The setup's processes; yields the URL clients use (nginx)."""
    kind = {"single": "memory", "sticky": "redis", "relay-redis": "redis", "relay-nats": "nats"}[name]
    options = "?sessions=off" if name == "sticky" else ""
    with broker(kind) as url, nodes(url + options, 1 if name == "single" else 2) as ports, \
            nginx(ports, sticky=name == "sticky") as base:
        yield base


# -- the load ---------------------------------------------------------------------------------


class Clock:
    def __init__(self, warmup: float, duration: float) -> None:
        now = time.perf_counter()
        self.measure_from = now + warmup
        self.stop_at = self.measure_from + duration
        self.latencies: list[float] = []
        self.errors = 0

    def record(self, started: float) -> bool:
        """Record a round trip; False once the measurement is over."""
        now = time.perf_counter()
        if started >= self.measure_from and now <= self.stop_at:
            self.latencies.append(now - started)
        return now < self.stop_at


def session_url(base: str) -> str:
    session = "".join(random.choices(string.ascii_lowercase + string.digits, k=16))
    return f"{base}/echo/{random.randint(0, 999):03d}/{session}"


async def send(http: aiohttp.ClientSession, url: str, message: str) -> None:
    async with http.post(url + "/xhr_send", data=json.dumps([message]).encode()) as r:
        await r.read()
        if r.status != 204:
            raise RuntimeError(f"xhr_send answered {r.status}")


async def polling_client(http: aiohttp.ClientSession, base: str, clock: Clock) -> None:
    url = session_url(base)
    async with http.post(url + "/xhr") as r:
        assert (await r.read()).startswith(b"o"), "no open frame"
    seq = 0
    while True:
        message = f"{seq:08d}"
        started = time.perf_counter()
        await send(http, url, message)
        while True:  # the echo (a heartbeat would come after 25 s only)
            async with http.post(url + "/xhr") as r:
                body = await r.read()
            if body.startswith(b"a"):
                break
        if json.loads(body[1:]) != [message]:
            raise RuntimeError(f"unexpected echo {body[:80]!r}")
        seq += 1
        if not clock.record(started):
            return


async def streaming_client(http: aiohttp.ClientSession, base: str, clock: Clock) -> None:
    url = session_url(base)
    seq = 0
    started = 0.0
    done = False
    while not done:
        async with http.post(url + "/xhr_streaming") as r:
            lines = r.content
            while True:
                line = await lines.readline()
                if not line:
                    break  # response_limit: open the next stream
                if line.startswith(b"hhhh"):
                    continue
                if line.startswith(b"o") or line.startswith(b"a"):
                    if line.startswith(b"a"):
                        if json.loads(line[1:]) != [f"{seq:08d}"]:
                            raise RuntimeError(f"unexpected echo {line[:80]!r}")
                        seq += 1
                        if not clock.record(started):
                            done = True
                            break
                    started = time.perf_counter()
                    await send(http, url, f"{seq:08d}")


async def measure(base: str, transport: str, clients: int, warmup: float, duration: float) -> dict:
    clock = Clock(warmup, duration)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        run = polling_client if transport == "xhr-polling" else streaming_client
        results = await asyncio.gather(*(run(http, base, clock) for _ in range(clients)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    latencies = sorted(clock.latencies)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else 0.0

    return {"transport": transport, "clients": clients, "round_trips_per_s": round(len(latencies) / duration),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "errors": len(errors), "first_error": repr(errors[0]) if errors else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sessions", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated: {', '.join(SETUPS)}")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="xhr-polling, xhr-streaming")
    parser.add_argument("--clients", type=int, default=20, help="sessions at once (default 20)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (default 1)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per setup and transport (default 3)")
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    setups = args.setups.split(",")
    transports = args.transports.split(",")
    rows = []
    with contextlib.ExitStack() as stack:
        # Every setup runs at once (idle ones cost next to nothing) and measurements take
        # turns, so that a burst of load from elsewhere does not land on one setup only.
        bases = {name: stack.enter_context(setup(name)) for name in setups}
        for round_number in range(1, args.rounds + 1):
            for transport in transports:
                for name in setups:
                    result = asyncio.run(measure(bases[name], transport, args.clients, args.warmup, args.duration))
                    row = {"setup": name, "round": round_number, **result}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print(f"\nmedian of {args.rounds} round(s), {args.clients} clients, {args.duration:g} s each")
    print(f"{'setup':<12} {'transport':<14} {'round trips/s':>14} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'errors':>7}")
    for transport in transports:
        for name in setups:
            mine = [r for r in rows if r["setup"] == name and r["transport"] == transport]
            rate = statistics.median(r["round_trips_per_s"] for r in mine)
            p50, p90, p99 = (statistics.median(r[k] for r in mine) for k in ("p50_ms", "p90_ms", "p99_ms"))
            errors = sum(r["errors"] for r in mine)
            print(f"{name:<12} {transport:<14} {rate:>14.0f} {p50:>8.2f} {p90:>8.2f} {p99:>8.2f} {errors:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
