"""Real brokers and real gateway nodes for the broker tests.

:class:`RedisServer` and :class:`NatsServer` run their own ``redis-server`` /
``nats-server`` on a free port of 127.0.0.1 (never the shared ones), and can be killed
and restarted on the same port. :func:`node` runs one gateway (``sockway serve``) on a
broker URL and waits until its ``/readyz`` answers 200. :class:`Client` speaks the
channels protocol over raw WebSocket. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from support import IN_CI, ROOT, GatewayProcess, free_port, require_program

T = 5.0
KEY = "broker-test-key"


# -- brokers ------------------------------------------------------------------------------------


class _Server:
    name = "?"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log", delete=False)  # noqa: SIM115

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output()}")
            try:
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if self.ping():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start within {timeout}s: {self.output()}")

    def ping(self) -> bool:
        return True

    def kill(self) -> None:
        """Stop it at once (SIGKILL, by its PID)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()[-3000:]


class RedisServer(_Server):
    name = "redis"

    def command(self) -> list[str]:
        exe = require_program("redis-server", "install it: apt-get install redis-server")
        return [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=T)

    def ping(self) -> bool:
        import redis

        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):  # not up yet
            return False


class NatsServer(_Server):
    name = "nats"

    def __init__(self) -> None:
        super().__init__()
        self.store = tempfile.mkdtemp(prefix="nats-js-")

    def command(self) -> list[str]:
        exe = require_program("nats-server", "install it: apt-get install nats-server")
        return [exe, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def cleanup(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)


class NatsClusterMember(NatsServer):
    """One server of a NATS cluster with JetStream (its own store, client and route ports)."""

    def __init__(self, index: int, route_ports: list[int]) -> None:
        super().__init__()
        self.index = index
        self.route_ports = route_ports
        self.config = os.path.join(self.store, "server.conf")
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in route_ports)
        with open(self.config, "w") as f:
            f.write(f"server_name: n{index}\nlisten: 127.0.0.1:{self.port}\n"
                    f'jetstream {{ store_dir: "{self.store}/js" }}\n'
                    f"cluster {{ name: sockway-test, listen: 127.0.0.1:{route_ports[index]}, routes: [{routes}] }}\n")

    def command(self) -> list[str]:
        exe = require_program("nats-server", "install it: apt-get install nats-server")
        return [exe, "-c", self.config]


class NatsCluster:
    """Three NATS servers routed into one cluster with clustered JetStream."""

    def __init__(self, size: int = 3) -> None:
        route_ports = [free_port() for _ in range(size)]
        self.members = [NatsClusterMember(i, route_ports) for i in range(size)]

    @property
    def url(self) -> str:
        """The seed list a gateway is given: every member."""
        return ",".join(m.url for m in self.members)

    def start(self, timeout: float = 20.0) -> None:
        for member in self.members:
            member.start()
        # JetStream answers once the cluster has elected its meta leader.
        asyncio.run(self._wait_jetstream(timeout))

    async def _wait_jetstream(self, timeout: float) -> None:
        import nats
        from nats.js import api as js_api

        nc = await nats.connect([m.url for m in self.members], connect_timeout=2)
        try:
            js = nc.jetstream(timeout=2)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await js.add_stream(js_api.StreamConfig(name="PROBE", subjects=["probe"],
                                                            num_replicas=len(self.members)))
                    await js.delete_stream("PROBE")
                    return
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"clustered JetStream not ready within {timeout}s: {exc}") from None
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def member(self, host_port: str) -> NatsClusterMember:
        return next(m for m in self.members if m.url.endswith(host_port))

    async def stream_leader(self, prefix: str, timeout: float = 10.0) -> tuple[NatsClusterMember, str]:
        """The member leading the first stream whose name starts with ``prefix``, with
        every replica caught up (so that losing one server leaves a quorum that has
        everything), and the stream's name."""
        import nats

        nc = await nats.connect([m.url for m in self.members if m.proc and m.proc.poll() is None],
                                connect_timeout=2)
        try:
            js = nc.jetstream(timeout=2)
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(Exception):
                    for info in await js.streams_info():
                        cluster = info.cluster
                        if (info.config.name.startswith(prefix) and cluster and cluster.leader
                                and len(cluster.replicas or []) == len(self.members) - 1
                                and all(r.current and not r.offline for r in cluster.replicas or [])):
                            return self.members[int(cluster.leader[1:])], info.config.name
                if time.monotonic() > deadline:
                    raise AssertionError(f"no caught-up stream {prefix}* within {timeout}s")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def stop(self) -> None:
        for member in self.members:
            member.stop()
            member.cleanup()


PACKAGES = {"redis": "pip install 'redis[hiredis]>=5'", "nats": "pip install nats-py"}


def require_module(name: str) -> None:
    """Skip (fail under CI=true) when an engine's client library is not installed."""
    if importlib.util.find_spec(name) is None:
        message = f"the Python package {name!r} is not installed: {PACKAGES[name]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def broker_server(kind: str) -> Iterator[_Server | None]:
    """A fresh broker of ``kind`` ("redis", "nats") for the block; None for "memory"."""
    if kind == "memory":
        yield None
        return
    require_module(kind)
    server: _Server = RedisServer() if kind == "redis" else NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if isinstance(server, NatsServer):
            server.cleanup()


# -- gateway nodes ------------------------------------------------------------------------------

NAMESPACES = """
[[namespace]]
name = ""
subscribe = "open"
publish = "open"
history_size = 100
presence = true
join_leave = true

[[namespace]]
name = "small"
publish = "open"
history_size = 5
"""


def node_config(broker_url: str, extra: str = "") -> str:
    return f"""
[server]
sweep_interval = 0.2
shutdown_timeout = 1

[api]
key = "{KEY}"

[broker]
url = "{broker_url}"

[[endpoint]]
prefix = "/ch"
mode = "channels"

{NAMESPACES}
{extra}
"""


def http_get(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def ready(gw: GatewayProcess) -> int:
    try:
        return http_get(gw.url + "/readyz")[0]
    except OSError:
        return 0


def wait_status(gw: GatewayProcess, status: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(gw) == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"/readyz of {gw.url} did not answer {status} within {timeout}s")


def start_node(broker_url: str, extra: str = "", port: int | None = None,
               args: tuple[str, ...] = ()) -> GatewayProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(node_config(broker_url, extra))
    port = port or free_port()
    proc = GatewayProcess(["serve", "--config", f.name, "--port", str(port), *args], port,
                          {"SOCKWAY_NO_UVLOOP": ""}, ROOT)
    proc.config_path = f.name  # type: ignore[attr-defined]
    try:
        proc.wait_ready()
        wait_status(proc, 200)
    except BaseException:
        proc.stop()
        raise
    return proc


def stop_node(proc: GatewayProcess) -> None:
    proc.stop()
    with contextlib.suppress(OSError):
        os.unlink(proc.config_path)  # type: ignore[attr-defined]


@contextlib.contextmanager
def nodes(broker_url: str, count: int, extra: str = "") -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    try:
        for _ in range(count):
            started.append(start_node(broker_url, extra))
        yield started
    finally:
        for proc in started:
            stop_node(proc)


# -- clients ------------------------------------------------------------------------------------


class Closed(Exception):
    """The server closed the connection with ``code`` and ``reason`` (None: no close frame)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class Client:
    """The channels protocol over raw WebSocket (``/ch/websocket``)."""

    _ids = itertools.count(1)

    def __init__(self, ws) -> None:
        self.ws = ws
        self.inbox: collections.deque[dict] = collections.deque()
        self.conn = ""

    @classmethod
    async def connect(cls, gw: GatewayProcess, prefix: str = "/ch") -> Client:
        ws = await ws_connect(gw.ws_url + prefix + "/websocket", open_timeout=T, close_timeout=1,
                              ping_interval=None, max_size=None, compression=None)
        client = cls(ws)
        client.conn = (await client.next("connected"))["conn"]
        return client

    async def _read(self, timeout: float) -> dict:
        try:
            return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        except websockets.ConnectionClosed as exc:
            raise Closed(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "") from None

    async def request(self, op: str, timeout: float = T, **fields: Any) -> dict:
        request_id = next(self._ids)
        await self.ws.send(json.dumps({"op": op, "id": request_id, **fields}))
        deadline = time.monotonic() + timeout
        while True:
            message = await self._read(max(0.01, deadline - time.monotonic()))
            if message.get("type") == "reply" and message.get("id") == request_id:
                return message
            self.inbox.append(message)

    async def ok(self, op: str, timeout: float = T, **fields: Any) -> dict:
        reply = await self.request(op, timeout, **fields)
        assert "result" in reply, reply
        return reply["result"]

    async def next(self, kind: str | None = None, timeout: float = T) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.inbox:
                message = self.inbox.popleft()
            else:
                message = await self._read(max(0.01, deadline - time.monotonic()))
            if kind is None or message.get("type") == kind:
                return message

    async def messages(self, count: int, timeout: float = T) -> list[dict]:
        return [await self.next("message", timeout) for _ in range(count)]

    async def until_marker(self, marker: str, channel: str, timeout: float = 10.0) -> list[dict]:
        """The messages this client receives on ``channel`` before ``marker``
        (:func:`publish_marker`). A channel's publications arrive in offset order, so
        whatever was due before the marker is in the list (expected, usually: nothing):
        instead of waiting for silence."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            message = await self.next("message", max(0.01, deadline - time.monotonic()))
            if message.get("channel") == channel and message.get("data") == marker:
                return got
            got.append(message)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


async def api(gw: GatewayProcess, op: str, **fields: Any) -> tuple[int, Any]:
    """POST /api/<op> (in a thread: the standard library's blocking client)."""
    def call() -> tuple[int, Any]:
        request = urllib.request.Request(
            gw.url + f"/api/{op}", data=json.dumps(fields).encode(), method="POST",
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    return await asyncio.to_thread(call)


async def publish_marker(gw: GatewayProcess, channel: str, timeout: float = 10.0) -> str:
    """Publish a marker on ``channel`` through ``gw`` (retried while the broker refuses,
    within ``timeout``) for :meth:`Client.until_marker`; returns it."""
    marker = f"marker {os.urandom(4).hex()}"
    deadline = time.monotonic() + timeout
    while (status := (await api(gw, "publish", channel=channel, data=marker))[0]) != 200:
        assert time.monotonic() < deadline, f"the marker could not be published: {status}"
        await asyncio.sleep(0.1)
    return marker


async def api_ok(gw: GatewayProcess, op: str, **fields: Any) -> dict:
    status, body = await api(gw, op, **fields)
    assert status == 200, (op, fields, status, body)
    return body["result"]


async def eventually(predicate, timeout: float = T, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
