"""The bridge and scale-out scenarios: publications into a channel, from the application
(ZeroMQ, HTTP API) or from a client, fanned out to thousands of subscribers by one or
two gateway nodes over the memory, Redis or NATS broker.

Each measurement starts its own processes on free 127.0.0.1 ports (a redis-server or
nats-server when the broker needs one, never the shared ones; the gateway; the publisher
when the application publishes), runs gen/subscribers.js against them, and stops every
one of them by PID whatever happens. The order of events:

1. broker and gateway up (health answers; with ``--workers 2`` both nodes answered);
2. the publisher (benchmarks/publisher.py) connects and says ``ready``;
3. the generator connects and subscribes every client, says ``ready``;
4. the runner reads the gateway's counters and (scale-out) where the clients landed,
   then tells the generator ``go``: it takes its CPU snapshot and says ``started``;
5. the runner tells the publisher ``go`` (or the generator's client 0 publishes);
6. the generator reports when every client has every message, the publisher when it
   is done; the gateway's counters are read again.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.servers import BENCH_DIR, ROOT, ServerError, free_port, node_binary, python_binary

if TYPE_CHECKING:
    from benchmarks.runner import Measurement, Settings

__all__ = ["BRIDGE_PATHS", "BROKERS", "EDGE_PATHS", "measure_once", "messages_for", "paced", "plan_bridge",
           "plan_calibration", "plan_scaleout"]

GEN = BENCH_DIR / "gen" / "subscribers.js"
CHANNEL_BLASTER = BENCH_DIR / "gen" / "channel_blaster.js"
KEY = "bench-key"
CHANNEL = "bench"
BRIDGE_PATHS = ("zmq-push", "zmq-pub", "http", "http-batch", "edge-broadcast", "edge-channel")
EDGE_PATHS = ("edge-broadcast", "edge-channel")
CALIBRATED_PATHS = ("zmq-push", "http", "http-batch")
BROKERS = ("memory", "redis", "nats")
CALIBRATION_MESSAGES = {"zmq-push": 200_000, "http": 20_000, "http-batch": 100_000}


# -- the plan -------------------------------------------------------------------------------------


def plan_calibration(s: Settings) -> list[Measurement]:
    """The generator's ceiling for channel envelopes (against gen/channel_blaster.js) at
    the largest client count, and the bridge publisher's (against sink.py)."""
    from benchmarks.runner import Measurement

    if "calibrate" not in s.scenarios:
        return []
    sizes = (s.bridge_clients if "bridge" in s.scenarios else []) + (
        s.scaleout_clients if "scaleout" in s.scenarios else [])
    runs = [Measurement("bridge", "channel-blaster", "raw", max(sizes), calibration=True, path="generator")]
    if "bridge" in s.scenarios:
        runs += [Measurement("bridge", "sink", "raw", 0, calibration=True, path=p)
                 for p in CALIBRATED_PATHS if p in s.bridge_paths]
    return runs


def plan_bridge(s: Settings) -> list[Measurement]:
    from benchmarks.runner import Measurement

    runs = []
    for clients in s.bridge_clients:
        runs += [Measurement("bridge", "sockway", "raw", clients, path=p) for p in s.bridge_paths]
    return runs


def plan_scaleout(s: Settings) -> list[Measurement]:
    from benchmarks.runner import Measurement

    runs = []
    for clients in s.scaleout_clients:
        for broker in s.brokers:
            for nodes in s.nodes:
                if broker == "memory" and nodes > 1:
                    continue  # refused by sockway: each process would have its own channels
                runs.append(Measurement("scaleout", "sockway", "raw", clients, broker=broker, nodes=nodes))
    return runs


# -- processes --------------------------------------------------------------------------------------


def _stop_pid(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; this PID only."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


class Child:
    """A helper process that speaks JSON lines on stdout and reads ``go`` on stdin.
    Its stderr (progress) goes to ours."""

    def __init__(self, name: str, command: list[str], env: dict | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                     text=True, cwd=ROOT, env=env, start_new_session=True)
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.last: dict | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, key: str, timeout: float, *, or_result: bool = False) -> dict:
        """The next JSON line that has ``key`` (or, ``or_result``, is the final result:
        has "ok"); fails on exit or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"{self.name} (pid {self.pid}) said nothing with {key!r} within {timeout:.0f}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                error = (self.last or {}).get("error")
                raise ServerError(f"{self.name} (pid {self.pid}) exited with {self.proc.wait(5)}"
                                  + (f": {error}" if error else f" before saying {key!r}"))
            if line.startswith("{"):
                obj = json.loads(line)
                self.last = obj
                if key in obj or (or_result and "ok" in obj):
                    return obj

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict:
        """The last JSON line before the process exits (killed after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                return {"ok": False, "error": f"{self.name} still running after {timeout:.0f}s; killed"}
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(5)
                return self.last if self.last is not None else {
                    "ok": False, "error": f"{self.name} exited with {self.proc.returncode} and no result"}
            if line.startswith("{"):
                self.last = json.loads(line)

    def stop(self) -> None:
        _stop_pid(self.proc, 5)


class BrokerServer:
    """A redis-server or nats-server of our own on a free port (never the shared ones)."""

    def __init__(self, kind: str, workdir: Path, log_path: Path) -> None:
        self.kind = kind
        self.port = free_port()
        exe = shutil.which("redis-server" if kind == "redis" else "nats-server")
        if exe is None:
            raise ServerError(f"{kind} broker: {kind}-server not found (scripts/system-deps.sh installs it)")
        if kind == "redis":
            command = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(workdir)]
        else:
            store = workdir / f"nats-{self.port}"
            store.mkdir()
            command = [exe, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(store)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.kind == "redis" else f"nats://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.kind}-server exited with {self.proc.returncode}: "
                                  f"{self.log_path.read_text(errors='replace')[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if self.kind == "redis":
                        sock.sendall(b"PING\r\n")
                        if sock.recv(64).startswith(b"+PONG"):
                            return
                    elif sock.recv(4096).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise ServerError(f"{self.kind}-server did not answer on port {self.port} within {timeout:.0f}s")

    def stop(self) -> None:
        try:
            _stop_pid(self.proc, 5)
        finally:
            self._log.close()


def _limit_open_files(n: int):
    """For ``preexec_fn``: the process may open ``n`` descriptors, soft and hard limit
    (a process can raise its soft limit up to the hard one by itself)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return limit


def _http_json(url: str, timeout: float = 2.0, key: str | None = None) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}", "Connection": "close"}
                                     if key else {"Connection": "close"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class Gateway:
    """``sockway serve`` with a configuration file, one node or ``--workers N``."""

    def __init__(self, config: str, workdir: Path, log_path: Path, workers: int = 1,
                 pythonpath: Path | None = None, nofile: int | None = None, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.workers = workers
        path = workdir / f"sockway-{self.port}.toml"
        path.write_text(config)
        command = [python_binary(), "-m", "sockway", "serve", "--config", str(path), "--port", str(self.port),
                   "--log-level", "warning"]
        if workers > 1:
            command += ["--workers", str(workers)]
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath) + os.pathsep + env.get("PYTHONPATH", "")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop(); a restart appends
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=ROOT, start_new_session=True,
                                     preexec_fn=None if nofile is None else _limit_open_files(nofile))
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_pids: list[int] = []

    def _died(self) -> str:
        self._log.flush()
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        return f"sockway (pid {self.pid}) exited with {self.proc.returncode}; its last output:\n{tail}"

    def health(self) -> dict:
        return _http_json(self.url + "/sockway/health")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the node (every node: each health request is a new connection, which
        SO_REUSEPORT gives to any of them) answers ready."""
        deadline = time.monotonic() + timeout
        ready: set[str] = set()
        while len(ready) < self.workers:
            if self.proc.poll() is not None:
                raise ServerError(self._died())
            if time.monotonic() > deadline:
                raise ServerError(f"sockway: {len(ready)} of {self.workers} nodes ready within {timeout:.0f}s; "
                                  f"its last output:\n{self._died()}")
            try:
                health = self.health()
                if health.get("ready"):
                    ready.add(health["node"])
                    continue
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.worker_pids = self._children() if self.workers > 1 else [self.pid]
        if len(self.worker_pids) != self.workers:
            raise ServerError(f"sockway: expected {self.workers} worker processes, found {self.worker_pids}")

    def _children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def node_connections(self, tries: int = 80) -> dict[str, int]:
        """Connections per node, from /sockway/health asked over new connections until
        every node answered."""
        counts: dict[str, int] = {}
        for _ in range(tries):
            try:
                health = self.health()
            except (OSError, ValueError):
                continue
            counts[health["node"]] = int(health["connections"])
            if len(counts) >= self.workers:
                break
        return counts

    def stats(self) -> dict | None:
        try:
            return _http_json(self.url + "/api/stats", key=KEY)["result"]
        except (OSError, ValueError, KeyError):
            return None

    def stop(self) -> None:
        try:
            _stop_pid(self.proc, 10)
            for pid in self.worker_pids:
                if pid != self.pid and Path(f"/proc/{pid}").exists():
                    # Workers get SIGTERM from their parent; one still there is stopped
                    # (it was started by the gateway process the runner started).
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            self._log.close()


def established_per_pid(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on local ``port`` held by each process (/proc)."""
    inodes: set[str] = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return {}
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        n = 0
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    n += 1
            except OSError:
                pass
        counts[pid] = n
    return counts


def proc_cpu(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- configurations -----------------------------------------------------------------------------------

NAMESPACE = """
[[namespace]]
name = ""
subscribe = "open"
publish = "open"
"""


def bridge_config(sub_port: int, pull_port: int) -> str:
    return f"""
[server]
shutdown_timeout = 1

[api]
key = "{KEY}"

[zeromq]
sub = "tcp://127.0.0.1:{sub_port}"
pull = "tcp://127.0.0.1:{pull_port}"

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[endpoint]]
prefix = "/broadcast"
mode = "broadcast"
{NAMESPACE}"""


def scaleout_config(broker_url: str) -> str:
    return f"""
[server]
shutdown_timeout = 1

[api]
key = "{KEY}"

[broker]
url = "{broker_url}"

[[endpoint]]
prefix = "/ch"
mode = "channels"
{NAMESPACE}"""


# -- one measurement ---------------------------------------------------------------------------------


def paced(m: Measurement, s: Settings) -> tuple[int, float]:
    """The paced phase's (messages, rate): ``paced_deliveries`` per second at most,
    ``paced_max_rate`` publications per second at most, for ``paced_seconds``."""
    if s.paced_seconds <= 0:
        return 0, 0.0
    rate = min(s.paced_max_rate, s.paced_deliveries / max(1, m.clients))
    return max(5, round(rate * s.paced_seconds)), round(rate, 3)


def messages_for(m: Measurement, s: Settings) -> int:
    if m.scenario == "bridge":
        return s.bridge_messages
    return s.scaleout_messages


def _generator_config(m: Measurement, s: Settings, port: int, pids: dict[str, int], *, mode: str,
                      publisher: str, streams: int, messages: int) -> dict:
    paced_messages, paced_rate = paced(m, s)
    return {
        "label": m.label,
        "host": "127.0.0.1",
        "port": port,
        "clients": m.clients,
        "endpoint": "/broadcast" if mode == "broadcast" else "/ch",
        "mode": mode,
        "channel": CHANNEL,
        "publisher": publisher,
        "messages": messages,
        "window": s.window,
        "pacedMessages": paced_messages,
        "pacedRate": paced_rate,
        "size": s.size,
        "streams": streams,
        "pids": pids,
        "clkTck": os.sysconf("SC_CLK_TCK"),
        "connectConcurrency": s.connect_concurrency,
        "connectTimeout": 60 if m.clients <= 5000 else 120,
        "subscribeTimeout": 60,
        "subscribeConcurrency": s.subscribe_concurrency,
        "stallTimeout": s.stall_timeout,
        "timeout": 600,
        "settleMs": 300,
        "sourcePrefix": "127.0.1.",
    }


def _delta(after: dict | None, before: dict | None) -> dict:
    """What the gateway's counters say happened in the measured window."""
    if not after or not before:
        return {}

    def get(d: dict, *path: str) -> float:
        for key in path:
            d = d.get(key, {}) if isinstance(d, dict) else {}
        return d if isinstance(d, int | float) else 0

    out = {
        "gateway_publications": get(after, "channels", "publications") - get(before, "channels", "publications"),
        "gateway_deliveries": get(after, "channels", "deliveries") - get(before, "channels", "deliveries"),
        "gateway_commands": get(after, "commands", "executed") - get(before, "commands", "executed"),
        "gateway_command_failures": get(after, "commands", "failed") - get(before, "commands", "failed"),
        "gateway_flushes": get(after, "coalescer", "flushes") - get(before, "coalescer", "flushes"),
        "gateway_writes": get(after, "coalescer", "writes") - get(before, "coalescer", "writes"),
        "slow_consumers": get(after, "slow_consumers") - get(before, "slow_consumers"),
    }
    if out["gateway_writes"]:
        out["deliveries_per_write"] = round(out["gateway_deliveries"] / out["gateway_writes"], 1)
    if out["gateway_flushes"]:
        out["publications_per_flush"] = round(out["gateway_publications"] / out["gateway_flushes"], 2)
    return out


def _hard_timeout(m: Measurement) -> float:
    return 2 * (60 if m.clients <= 5000 else 120) + 60 + 600 + 30


def _publisher_config(s: Settings, path: str, port: int, zmq_address: str | None, messages: int,
                      window: int, paced: tuple[int, float]) -> dict:
    return {
        "mode": path, "host": "127.0.0.1", "port": port, "key": KEY, "channel": CHANNEL,
        "zmq_address": zmq_address, "messages": messages, "window": window,
        "paced_messages": paced[0], "paced_rate": paced[1], "size": s.size,
        "http_clients": s.http_clients, "batch": s.batch, "stall_timeout": s.stall_timeout,
    }


def _measure_bridge(m: Measurement, s: Settings, workdir: Path, log_path: Path, record: dict) -> dict:
    sub_port, pull_port = free_port(), free_port()
    gateway = Gateway(bridge_config(sub_port, pull_port), workdir, log_path, pythonpath=s.sockway_path)
    children: list[Child] = []
    try:
        gateway.wait_ready()
        pids = {"sockway": gateway.pid}
        publisher = None
        edge = m.path in EDGE_PATHS
        if not edge:
            address = f"tcp://127.0.0.1:{pull_port if m.path == 'zmq-push' else sub_port}"
            config = _publisher_config(s, m.path, gateway.port, address, s.bridge_messages, s.window,
                                       paced(m, s))
            publisher = Child("publisher", [python_binary(), "-m", "benchmarks.publisher", json.dumps(config)])
            children.append(publisher)
            publisher.wait_for("ready", 45)
            pids["publisher"] = publisher.pid
        streams = 1 if edge or m.path.startswith("zmq") else max(1, s.http_clients)
        config = _generator_config(m, s, gateway.port, pids, mode="broadcast" if m.path == "edge-broadcast"
                                   else "channel", publisher="client" if edge else "external",
                                   streams=streams, messages=s.bridge_messages)
        generator = Child("generator", [node_binary(), str(GEN), json.dumps(config)])
        children.append(generator)
        ready = generator.wait_for("ready", _hard_timeout(m))
        before = gateway.stats()
        generator.go()
        generator.wait_for("started", 30)
        if publisher is not None:
            publisher.go()
        line = generator.wait_for("phase1", _hard_timeout(m), or_result=True)
        after = gateway.stats()  # the full-speed phase's counters
        result = line if "ok" in line else generator.result(_hard_timeout(m))
        if publisher is not None:
            published = publisher.result(max(30.0, s.stall_timeout + 10))
            result["publisher"] = published
            for key in ("published_per_s", "acked_per_s", "window_wait_share", "errors"):
                result[f"publisher_{key}"] = published.get(key)
            if not published.get("ok"):
                result["ok"] = False
                result["error"] = (result.get("error") + "; " if result.get("error") else "") + \
                    f"publisher: {published.get('error')}"
        result |= _delta(after, before)
        result["connect_s"] = ready.get("connect_s", result.get("connect_s"))
        if result.get("gateway_command_failures"):
            result["ok"] = False
            result["error"] = (result.get("error") or "") + f" {result['gateway_command_failures']} commands failed"
        if gateway.proc.poll() is not None:
            result["ok"] = False
            result["error"] = (result.get("error") or "") + "; " + gateway._died()
        return result
    finally:
        for child in children:
            child.stop()
        gateway.stop()


def _measure_generator_ceiling(m: Measurement, s: Settings, log_path: Path) -> dict:
    """gen/subscribers.js against gen/channel_blaster.js, which writes every publication
    to every client in one write: what the generator can read and check on this machine."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        blaster = subprocess.Popen([node_binary(), str(CHANNEL_BLASTER), "--port", str(port), "--messages",
                                    str(s.bridge_messages), "--size", str(s.size)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        generator = None
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                        break
                except OSError:
                    if blaster.poll() is not None or time.monotonic() > deadline:
                        raise ServerError(f"channel_blaster.js did not start (status {blaster.poll()})") from None
                    time.sleep(0.05)
            config = _generator_config(m, s, port, {"blaster": blaster.pid}, mode="channel", publisher="client",
                                       streams=1, messages=s.bridge_messages)
            config["pacedMessages"] = 0
            generator = Child("generator", [node_binary(), str(GEN), json.dumps(config)])
            generator.wait_for("ready", _hard_timeout(m))
            generator.go()
            return generator.result(_hard_timeout(m))
        finally:
            if generator is not None:
                generator.stop()
            _stop_pid(blaster, 5)


def _measure_calibration(m: Measurement, s: Settings, record: dict) -> dict:
    """The publisher, without a window, against benchmarks/sink.py (a gateway that does
    nothing): its ceiling on this machine."""
    port = free_port()
    zmq_port = free_port()
    sink = Child("sink", [python_binary(), "-m", "benchmarks.sink",
                          json.dumps({"port": port, "zmq_address": f"tcp://127.0.0.1:{zmq_port}"})])
    children = [sink]
    try:
        sink.wait_for("ready", 20)
        messages = CALIBRATION_MESSAGES[m.path] // (4 if s.quick else 1)
        config = _publisher_config(s, m.path, port, f"tcp://127.0.0.1:{zmq_port}", messages, 0, (0, 0.0))
        publisher = Child("publisher", [python_binary(), "-m", "benchmarks.publisher", json.dumps(config)])
        children.append(publisher)
        publisher.wait_for("ready", 45)
        sink_cpu0 = proc_cpu(sink.pid)
        machine0 = _machine_busy()
        started = time.monotonic()
        publisher.go()
        result = publisher.result(120)
        wall = time.monotonic() - started
        sink_cpu1 = proc_cpu(sink.pid)
        machine = _machine_busy()
        own = result.get("cpu_s") or 0.0
        sink_used = None if sink_cpu0 is None or sink_cpu1 is None else sink_cpu1 - sink_cpu0
        cpu = {"publisher": round(own / result["wall_s"], 3) if result.get("wall_s") else None,
               "sink": None if sink_used is None else round(sink_used / wall, 3)}
        result["cpu"] = cpu
        result["messages"] = messages
        if machine0 is not None and machine is not None:
            result["other_cpu_util"] = round(max(0.0, machine - machine0 - own - (sink_used or 0)) / wall, 3)
        result["publisher_published_per_s"] = result.get("published_per_s")
        result["publisher_acked_per_s"] = result.get("acked_per_s")
        return result
    finally:
        for child in children:
            child.stop()


def _machine_busy() -> float | None:
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields)) / os.sysconf("SC_CLK_TCK")


def _measure_scaleout(m: Measurement, s: Settings, workdir: Path, log_path: Path, record: dict) -> dict:
    broker = None
    gateway = None
    generator = None
    try:
        url = "memory://"
        if m.broker != "memory":
            broker = BrokerServer(m.broker, workdir, log_path.with_name(log_path.stem + f"-{m.broker}.log"))
            broker.wait_ready()
            url = broker.url
        gateway = Gateway(scaleout_config(url), workdir, log_path, workers=m.nodes, pythonpath=s.sockway_path)
        gateway.wait_ready()
        pids: dict[str, int] = {}
        if m.nodes > 1:
            pids["sockway-parent"] = gateway.pid
        for i, pid in enumerate(gateway.worker_pids, 1):
            pids[f"sockway-{i}" if m.nodes > 1 else "sockway"] = pid
        if broker is not None:
            pids[f"{m.broker}-server"] = broker.pid
        config = _generator_config(m, s, gateway.port, pids, mode="channel", publisher="client", streams=1,
                                   messages=messages_for(m, s))
        generator = Child("generator", [node_binary(), str(GEN), json.dumps(config)])
        ready = generator.wait_for("ready", _hard_timeout(m))
        nodes = gateway.node_connections()
        sockets = established_per_pid(gateway.worker_pids, gateway.port)
        labels = {pid: name for name, pid in pids.items()}
        # One node: its counters (with two, each request reaches either node).
        before = gateway.stats() if m.nodes == 1 else None
        generator.go()
        generator.wait_for("started", 30)
        line = generator.wait_for("phase1", _hard_timeout(m), or_result=True)
        after = gateway.stats() if m.nodes == 1 else None
        result = line if "ok" in line else generator.result(_hard_timeout(m))
        result |= _delta(after, before)
        result["clients_per_node"] = nodes
        result["clients_per_process"] = {labels[pid]: n for pid, n in sockets.items()}
        result["connect_s"] = ready.get("connect_s", result.get("connect_s"))
        if sum(nodes.values()) != m.clients and result.get("ok"):
            result["note"] = f"health reported {sum(nodes.values())} connections for {m.clients} clients"
        if gateway.proc.poll() is not None:
            result["ok"] = False
            result["error"] = (result.get("error") or "") + "; " + gateway._died()
        return result
    finally:
        if generator is not None:
            generator.stop()
        if gateway is not None:
            gateway.stop()
        if broker is not None:
            broker.stop()


def measure_once(m: Measurement, s: Settings, env: dict[str, Any], run_id: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    started = time.monotonic()
    record: dict[str, Any] = {"scenario": m.scenario, "server": m.server, "transport": m.transport,
                              "clients": m.clients, "calibration": m.calibration, "size": s.size}
    if m.scenario == "bridge":
        record |= {"path": m.path, "messages": s.bridge_messages, "window": s.window,
                   "http_clients": s.http_clients, "batch": s.batch}
    else:
        record |= {"broker": m.broker, "nodes": m.nodes, "messages": messages_for(m, s), "window": s.window}
    if not m.calibration:
        paced_messages, paced_rate = paced(m, s)
        record |= {"paced_messages": paced_messages, "paced_rate": paced_rate,
                   "paced_deliveries_per_s": round(paced_rate * m.clients)}
    name = f"{run_id}-{m.scenario}-{m.clients}-{m.path or m.broker}-{m.nodes}"
    log_path = s.results_dir / "logs" / f"{name}.log"
    workdir = Path(tempfile.mkdtemp(prefix="sockway-bench-"))
    print(f"[bench] {m.label}: starting", file=sys.stderr, flush=True)
    try:
        if m.calibration and m.path == "generator":
            result = _measure_generator_ceiling(m, s, log_path)
        elif m.calibration:
            result = _measure_calibration(m, s, record)
        elif m.scenario == "bridge":
            result = _measure_bridge(m, s, workdir, log_path, record)
        else:
            result = _measure_scaleout(m, s, workdir, log_path, record)
    except ServerError as exc:
        result = {"ok": False, "error": str(exc)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record |= result
    record["duration_s"] = round(time.monotonic() - started, 2)
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["run_id"] = run_id
    record |= env
    if not record.get("ok"):
        print(f"[bench] {m.label}: FAILED: {record.get('error')}", file=sys.stderr, flush=True)
    return record
