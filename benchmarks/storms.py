"""Steady-rate latency, connection storms and the reconnect storm (see benchmarks/README.md).

- ``steady``: a paced fan-out, run by gen/loadgen.js against each server like the
  fan-out scenario (one fresh server per measurement, started by the runner): N clients,
  one more connection publishing at a fixed rate, every delivery timed from its send time.
- ``storm``: N connections opened as fast as the server takes them (gen/loadgen.js), with
  a browser's headers; connects/s and the server's CPU per connect.
- ``reconnect``: measured here. sockway: 10,000 subscribers of a channel on one gateway
  node, a publisher on a second node sharing a broker of our own (history on), the first
  node stopped with SIGTERM and started again on the same port; the subscribers come back
  and recover from their last offset (gen/reconnect.js). Node ws: 10,000 connections to a
  ws server restarted the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.abuse import Talker
from benchmarks.pubsub import BrokerServer, Gateway, proc_cpu
from benchmarks.servers import BENCH_DIR, SERVERS, ServerError, ServerProcess, node_binary

if TYPE_CHECKING:
    from benchmarks.runner import Measurement, Settings

__all__ = ["STEADY_DEFAULT", "STEADY_QUICK", "measure_reconnect", "plan", "reconnect_config"]

RECONNECT_GEN = BENCH_DIR / "gen" / "reconnect.js"
STEADY_DEFAULT = ((1000, 100), (1000, 500), (1000, 1000), (1000, 2000), (5000, 100))
"""(clients, messages per second) of the steady-rate scenario."""
STEADY_QUICK = ((1000, 100), (1000, 1000))
CHANNEL = "storm"
SOURCE_PREFIX = "127.0.1."


def plan(s: Settings) -> list[Measurement]:
    """Steady, storm and reconnect measurements; with ``calibrate``, the generator's ceiling
    for the first two (against gen/blaster.js) first."""
    from benchmarks.runner import Measurement

    runs: list[Measurement] = []
    chosen = set(s.scenarios)
    transports = [t for t in ("raw", "sockjs") if t in s.transports]
    if "calibrate" in chosen and "steady" in chosen and s.steady:
        clients, rate = max(s.steady, key=lambda cr: cr[0] * cr[1])
        runs += [Measurement("steady", "blaster", t, clients, True, rate=rate) for t in transports]
    if "calibrate" in chosen and "storm" in chosen:
        runs += [Measurement("storm", "blaster", t, s.storm_connections, True) for t in transports]

    def pairs(with_socketio: bool) -> list[tuple[str, str]]:
        order = [("sockway", "raw"), ("ws", "raw")]
        if with_socketio:
            order.append(("socket.io", "socketio"))
        order += [("sockway", "sockjs"), ("sockjs-node", "sockjs")]
        return [(server, t) for server, t in order if server in s.servers and t in s.transports]

    if "steady" in chosen:
        for clients, rate in s.steady:
            runs += [Measurement("steady", server, t, clients, rate=rate) for server, t in pairs(True)]
    if "storm" in chosen:
        rounds = max(1, s.storm_rounds)
        for r in range(1, rounds + 1):
            runs += [Measurement("storm", server, t, s.storm_connections, round=r, rounds=rounds)
                     for server, t in pairs(False)]
    if "reconnect" in chosen:
        runs += [Measurement("reconnect", server, "raw", s.reconnect_subscribers)
                 for server in ("sockway", "ws") if server in s.servers]
    return runs


def reconnect_config(broker_url: str, history_size: int) -> str:
    """Two gateway nodes share the channel through the broker; the channel keeps
    ``history_size`` publications, enough for the outage at the publishing rate."""
    return f"""
[broker]
url = "{broker_url}"

[[namespace]]
name = ""
subscribe = "open"
publish = "open"
history_size = {history_size}

[[endpoint]]
prefix = "/ch"
mode = "channels"
"""


def _monotonic_us() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock gen/measure.js's nowUs() reads."""
    return int(time.monotonic() * 1e6)


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """True when it exited by itself within ``timeout`` seconds; else it is killed (this PID)."""
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return False


def _generator_config(m: Measurement, s: Settings, port: int, publisher_port: int | None,
                      channels: bool) -> dict[str, Any]:
    seconds = s.reconnect_before + s.reconnect_after + 180  # room for any outage the timeouts allow
    return {
        "label": m.label, "mode": "channels" if channels else "plain", "host": "127.0.0.1", "port": port,
        "publisherPort": publisher_port, "endpoint": "/ch" if channels else "/broadcast", "channel": CHANNEL,
        "clients": m.clients, "rate": s.reconnect_rate if channels else 0, "size": s.size,
        "maxMessages": int(s.reconnect_rate * seconds) + 100, "connectConcurrency": s.connect_concurrency,
        "subscribeConcurrency": s.subscribe_concurrency, "sourcePrefix": SOURCE_PREFIX, "connectTimeout": 120,
        "drainTimeout": 10, "clkTck": os.sysconf("SC_CLK_TCK"),
    }


BACK_TIMEOUT = 120.0
"""Seconds the clients have to come back after the new process was started."""


class _Restartable:
    """The server whose restart is measured: sockway (a Gateway) or ws (a ServerProcess),
    started again with the same command on the same port."""

    def __init__(self, m: Measurement, s: Settings, workdir: Path, log_path: Path, config: str | None) -> None:
        self.m, self.s, self.workdir, self.log_path, self.config = m, s, workdir, log_path, config
        self.current: Gateway | ServerProcess | None = None

    def start(self, port: int | None = None) -> Gateway | ServerProcess:
        if self.m.server == "sockway":
            assert self.config is not None
            self.current = Gateway(self.config, self.workdir, self.log_path, pythonpath=self.s.sockway_path,
                                   port=port)
        else:
            self.current = ServerProcess(SERVERS[self.m.server], self.log_path, 0, self.s.size, port=port)
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()


def measure_reconnect(m: Measurement, s: Settings, env: dict[str, Any], run_id: str) -> dict[str, Any]:
    started = time.monotonic()
    channels = m.server == "sockway"
    record: dict[str, Any] = {"scenario": "reconnect", "server": m.server, "transport": "raw", "clients": m.clients,
                              "calibration": False, "size": s.size,
                              "rate": s.reconnect_rate if channels else 0,
                              "broker": s.reconnect_broker if channels else ""}
    log_path = s.results_dir / "logs" / f"{run_id}-reconnect-{m.clients}-{m.server}.log"
    workdir = Path(tempfile.mkdtemp(prefix="sockway-bench-"))
    broker = None
    publisher_node = None
    server = None
    generator = None
    print(f"[bench] {m.label}: starting", file=sys.stderr, flush=True)
    try:
        config = None
        if channels:
            broker = BrokerServer(s.reconnect_broker, workdir, log_path.with_name(log_path.stem + "-broker.log"))
            broker.wait_ready()
            history = max(1000, int(s.reconnect_rate * (BACK_TIMEOUT + s.reconnect_before + s.reconnect_after + 30)))
            record["history_size"] = history
            config = reconnect_config(broker.url, history)
        server = _Restartable(m, s, workdir, log_path, config)
        first = server.start()
        first.wait_ready(30)
        port = first.port
        publisher_port = None
        if channels:
            assert config is not None
            publisher_node = Gateway(config, workdir, log_path.with_name(log_path.stem + "-publisher-node.log"),
                                     pythonpath=s.sockway_path)
            publisher_node.wait_ready()
            publisher_port = publisher_node.port
        generator = Talker("generator", [node_binary(), str(RECONNECT_GEN),
                                         json.dumps(_generator_config(m, s, port, publisher_port, channels))])
        ready = generator.wait_for("ready", 300)
        generator.go()
        time.sleep(s.reconnect_before)

        # The restart: SIGTERM, wait for the process to exit, the same command on the same port.
        generator.say(f"term {_monotonic_us()}")
        t_term = time.monotonic()
        old = first.proc
        old.send_signal(signal.SIGTERM)
        exited_by_itself = _wait_exit(old, 60)
        t_exit = time.monotonic()
        first.stop()  # closes its log
        second = server.start(port)
        t_spawn = time.monotonic()
        generator.say(f"spawned {int(t_spawn * 1e6)} {second.pid}")
        ready_s = None
        try:
            second.wait_ready(60)
            ready_s = round(time.monotonic() - t_spawn, 3)
        except ServerError as exc:
            print(f"[bench] {m.label}: {exc}", file=sys.stderr, flush=True)
        back = generator.wait_for("back", BACK_TIMEOUT, or_result=True)
        if "back" in back:
            time.sleep(s.reconnect_after)
        generator.say("stop")
        result = back if "ok" in back else generator.result(60)
        result |= {"shutdown_s": round(t_exit - t_term, 3), "shutdown_clean": exited_by_itself,
                   "spawn_s": round(t_spawn - t_exit, 3), "health_s": ready_s,
                   "ready_connect_s": ready.get("connect_s"), "server_pid": second.pid}
        if second.proc.poll() is not None:
            result["ok"] = False
            result["error"] = (result.get("error") or "") + f"; the restarted {m.server} exited"
        if broker is not None:
            result["broker_cpu_s"] = proc_cpu(broker.pid)
    except ServerError as exc:
        result = {"ok": False, "error": str(exc)}
    finally:
        if generator is not None:
            generator.stop()
        if server is not None:
            server.stop()
        if publisher_node is not None:
            publisher_node.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    record |= result
    record["duration_s"] = round(time.monotonic() - started, 2)
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["run_id"] = run_id
    record |= env
    if not record.get("ok"):
        print(f"[bench] {m.label}: FAILED: {record.get('error')}", file=sys.stderr, flush=True)
    return record
