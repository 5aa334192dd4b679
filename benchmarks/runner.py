"""Running the plan: for each measurement, start the server, run the Node load generator
against it, stop the server, and record one JSON line."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import abuse, pubsub, storms
from benchmarks.servers import BENCH_DIR, ROOT, SERVERS, ServerError, node_binary, running

__all__ = ["Measurement", "Settings", "environment", "plan", "run_all"]

LOADGEN = BENCH_DIR / "gen" / "loadgen.js"
ENDPOINTS = {"fanout": "/broadcast", "echo": "/echo", "idle": "/echo", "steady": "/broadcast", "storm": "/echo"}
PEER_FOR = {"raw": "ws", "sockjs": "sockjs-node"}
SOURCE_PREFIX = "127.0.1."
"""The generator's clients connect from 127.0.1.1-250 (a few connections per address, as
from the internet): sockway limits the connections of one client address
(``max_tcp_per_address``), and 10,000 from 127.0.0.1 would be refused."""


@dataclass
class Settings:
    fanout_clients: list[int]
    messages: int
    size: int
    window: int
    echo_clients: int
    echo_duration: float
    echo_warmup: float
    echo_rounds: int
    idle_connections: int
    idle_wait: float
    scenarios: list[str]
    servers: list[str]
    transports: list[str]
    stall_timeout: float
    connect_concurrency: int
    results_dir: Path
    quick: bool = False
    retries: int = 1
    disturbed_above: float = 0.25
    quiet_wait: float = 30.0
    sockway_path: Path | None = None
    sockway_rev: str | None = None
    # bridge and scaleout (benchmarks/pubsub.py)
    bridge_clients: list[int] = field(default_factory=lambda: [1000, 5000])
    bridge_messages: int = 1000
    bridge_paths: list[str] = field(default_factory=list)
    http_clients: int = 4
    batch: int = 25
    paced_deliveries: float = 50_000.0
    paced_seconds: float = 2.0
    paced_max_rate: float = 50.0
    scaleout_clients: list[int] = field(default_factory=lambda: [5000, 10000])
    scaleout_messages: int = 1000
    brokers: list[str] = field(default_factory=lambda: ["memory", "redis", "nats"])
    nodes: list[int] = field(default_factory=lambda: [1, 2])
    subscribe_concurrency: int = 50
    # abuse (benchmarks/abuse.py)
    abuse_duration: float = 300.0
    abuse_subscribers: int = 1000
    abuse_publish_rate: float = 50.0
    abuse_echo_rate: float = 10.0
    abusers: list[str] = field(default_factory=lambda: list(abuse.KINDS))
    abuse_scale: float = 1.0
    gateway_nofile: int = 4096
    # steady rate, connection storm, reconnect storm (benchmarks/storms.py)
    steady: list[tuple[int, int]] = field(default_factory=lambda: list(storms.STEADY_DEFAULT))
    steady_warmup: float = 2.0
    steady_seconds: float = 10.0
    steady_bound_ms: float = 1000.0
    steady_drain: float = 5.0
    storm_connections: int = 10000
    storm_rounds: int = 3
    reconnect_subscribers: int = 10000
    reconnect_rate: float = 20.0
    reconnect_broker: str = "redis"
    reconnect_before: float = 3.0
    reconnect_after: float = 3.0


@dataclass
class Measurement:
    scenario: str  # fanout, echo, idle, bridge, scaleout, abuse
    server: str
    transport: str
    clients: int
    calibration: bool = False
    round: int = 1
    rounds: int = 1
    path: str = ""  # bridge: how the publications come in (pubsub.BRIDGE_PATHS)
    broker: str = ""  # scaleout: memory, redis, nats
    nodes: int = 1  # scaleout: gateway processes (sockway serve --workers)
    rate: int = 0  # steady: messages published per second

    @property
    def label(self) -> str:
        if self.scenario == "bridge":
            if self.calibration and self.path == "generator":
                return f"calibration: generator, {self.clients} subscribers against channel_blaster.js"
            if self.calibration:
                return f"calibration: {self.path} publisher against sink.py"
            return f"bridge {self.clients} {self.path}"
        if self.scenario == "scaleout":
            return f"scaleout {self.clients} {self.broker} x{self.nodes}"
        if self.scenario == "abuse":
            return f"abuse {self.clients} subscribers"
        if self.scenario == "reconnect":
            return f"reconnect {self.clients} {self.server}"
        text = f"{self.scenario} {self.clients} {self.server} {self.transport}"
        if self.scenario == "steady":
            text = f"steady {self.clients} x {self.rate}/s {self.server} {self.transport}"
        return text + (f" round {self.round}/{self.rounds}" if self.rounds > 1 else "")


def plan(settings: Settings) -> list[Measurement]:
    """Every measurement of the run, calibration first, then each scenario with sockway
    and its peer side by side."""
    runs: list[Measurement] = []
    transports = [t for t in ("raw", "sockjs") if t in settings.transports]
    # With other scenarios alone, calibrate means their own calibrations (pubsub.py,
    # storms.py), not the fan-out blaster's.
    chosen = set(settings.scenarios)
    others = {"bridge", "scaleout", "steady", "storm", "reconnect", "abuse"}
    if "calibrate" in chosen and ({"fanout", "echo", "idle"} & chosen or not others & chosen):
        # The generator's ceiling, at the largest fan-out and at the echo size.
        for transport in transports:
            runs.append(Measurement("fanout", "blaster", transport, max(settings.fanout_clients), True))
        if "echo" in settings.scenarios:
            for transport in transports:
                runs.append(Measurement("echo", "blaster", transport, settings.echo_clients, True))

    def pairs() -> list[tuple[str, str]]:
        result = []
        for transport in transports:
            for server in ("sockway", PEER_FOR[transport]):
                if server in settings.servers:
                    result.append((server, transport))
        return result

    if "fanout" in settings.scenarios:
        for clients in settings.fanout_clients:
            runs += [Measurement("fanout", s, t, clients) for s, t in pairs()]
    if "echo" in settings.scenarios:
        # Interleaved rounds: sockway and its peer alternate, so that a burst of load from
        # other processes falls on both; the table reports the median.
        rounds = max(1, settings.echo_rounds)
        for r in range(1, rounds + 1):
            runs += [Measurement("echo", s, t, settings.echo_clients, round=r, rounds=rounds)
                     for s, t in pairs()]
    if "idle" in settings.scenarios:
        runs += [Measurement("idle", s, t, settings.idle_connections) for s, t in pairs()]
    if {"bridge", "scaleout"} & set(settings.scenarios):
        runs += pubsub.plan_calibration(settings)
    if "bridge" in settings.scenarios:
        runs += pubsub.plan_bridge(settings)
    if "scaleout" in settings.scenarios:
        runs += pubsub.plan_scaleout(settings)
    if "abuse" in settings.scenarios:
        runs += abuse.plan(settings)
    runs += storms.plan(settings)
    return runs


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _npm_version(package: str) -> str | None:
    try:
        return json.loads((ROOT / "node_modules" / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def environment(settings: Settings) -> dict[str, Any]:
    """What the results depend on besides the code: recorded in every line."""
    node = subprocess.run([node_binary(), "--version"], capture_output=True, text=True,
                          timeout=10).stdout.strip()
    if settings.sockway_rev:
        sockway = f"{_version('sockway')}+{settings.sockway_rev[:9]}"
    else:
        dirty = bool(_git("status", "--porcelain", "--", "src"))
        head = _git("rev-parse", "--short", "HEAD")
        sockway = f"{_version('sockway')}+{head}" + ("-dirty" if dirty else "")
    return {
        "python": platform.python_version(),
        "node": node,
        "sockway": sockway,
        "versions": {
            "aiohttp": _version("aiohttp"), "websockets": _version("websockets"),
            "uvloop": _version("uvloop"), "orjson": _version("orjson"),
            "ws": _npm_version("ws"), "sockjs": _npm_version("sockjs"),
            "socket.io": _npm_version("socket.io"),
        },
        "machine": {
            "cpu": _cpu_model(), "cpus": os.cpu_count(), "mem_gib": _mem_total_gib(),
            "kernel": platform.release(),
        },
    }


def _generator_config(m: Measurement, s: Settings, port: int, pid: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "scenario": m.scenario,
        "label": m.label,
        "host": "127.0.0.1",
        "port": port,
        "endpoint": ENDPOINTS[m.scenario],
        "transport": m.transport,
        "clients": m.clients,
        "size": s.size,
        "serverPid": pid,
        "clkTck": os.sysconf("SC_CLK_TCK"),
        "connectConcurrency": s.connect_concurrency,
        "connectTimeout": 60 if m.clients <= 5000 else 120,
    }
    config["sourcePrefix"] = SOURCE_PREFIX
    if m.scenario == "steady":
        config |= {"rate": m.rate, "warmup": s.steady_warmup, "duration": s.steady_seconds,
                   "boundMs": s.steady_bound_ms, "drainTimeout": s.steady_drain}
        if m.server == "blaster":
            config["endpoint"] = "/relay"
    elif m.scenario == "storm":
        config |= {"warmConnections": 100}
    elif m.scenario == "fanout":
        config |= {"messages": s.messages, "window": s.window, "stallTimeout": s.stall_timeout,
                   "timeout": 600}
    elif m.scenario == "echo":
        config |= {"warmup": s.echo_warmup, "duration": s.echo_duration}
    else:
        config |= {"idleWait": s.idle_wait, "warmConnections": 100}
    return config


def _hard_timeout(m: Measurement, s: Settings) -> float:
    """A bound on the generator process as a whole, beyond its own per-phase timeouts."""
    connect = 2 * (60 if m.clients <= 5000 else 120)
    if m.scenario == "fanout":
        return connect + 600 + 30
    if m.scenario == "echo":
        return connect + s.echo_warmup + s.echo_duration + 30
    if m.scenario == "steady":
        return connect + s.steady_warmup + s.steady_seconds + s.steady_drain + 60
    if m.scenario == "storm":
        return connect + 30
    return connect + s.idle_wait + 30


def _run_generator(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = subprocess.Popen([node_binary(), str(LOADGEN), json.dumps(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=None, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # this PID only
        proc.communicate()
        return {"ok": False, "error": f"load generator still running after {timeout:.0f}s; killed"}
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"load generator exited with {proc.returncode} and no result"}
    return json.loads(lines[-1])


def machine_busy(interval: float = 1.0) -> float | None:
    """Cores' worth of CPU the whole machine used over ``interval`` seconds (/proc/stat)."""

    def busy() -> tuple[float, float] | None:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal
        used = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields))
        return used, time.monotonic()

    first = busy()
    time.sleep(interval)
    second = busy()
    if first is None or second is None:
        return None
    return (second[0] - first[0]) / os.sysconf("SC_CLK_TCK") / (second[1] - first[1])


QUIET_BUDGET = 180.0
"""Seconds a whole run may spend waiting for a quiet machine (then it measures anyway)."""
RETRY_UNDER = 60.0
"""Measurements that took longer than this are not repeated when disturbed, only flagged."""
_waited = 0.0


def wait_for_quiet(s: Settings, label: str) -> float | None:
    """Before a measurement: wait (at most ``quiet_wait`` seconds, and QUIET_BUDGET in the
    whole run) until other processes use less than ``disturbed_above`` of a core. Returns
    the last load seen."""
    global _waited
    if s.quiet_wait <= 0:
        return None  # not waiting, and not spending half a second on a reading
    started = time.monotonic()
    deadline = started + max(0.0, min(s.quiet_wait, QUIET_BUDGET - _waited))
    load = machine_busy(0.5)
    told = False
    while load is not None and load > s.disturbed_above and time.monotonic() < deadline:
        if not told:
            print(f"[bench] {label}: other processes are using {100 * load:.0f}% CPU; waiting up to "
                  f"{deadline - started:.0f}s for a quieter machine", file=sys.stderr, flush=True)
            told = True
        load = machine_busy()
    _waited += time.monotonic() - started
    return load


def disturbance(record: dict[str, Any]) -> float:
    """CPU other processes used during the measured window (bridge and scaleout: the
    worse of their two phases)."""
    values = [record.get(key) for key in ("other_cpu_util", "paced_other_cpu_util")]
    return max((float(v) for v in values if isinstance(v, int | float)), default=0.0)


def _better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A successful measurement beats a failed one; then the less disturbed one wins."""
    if bool(a.get("ok")) != bool(b.get("ok")):
        return bool(a.get("ok"))
    return disturbance(a) < disturbance(b)


def measure(m: Measurement, s: Settings, env: dict[str, Any], run_id: str) -> dict[str, Any]:
    """One measurement, repeated (up to ``retries`` times) while other processes took more
    than ``disturbed_above`` of a core during its window; the least disturbed is kept."""
    best: dict[str, Any] | None = None
    for attempt in range(1, s.retries + 2):
        load = wait_for_quiet(s, m.label)
        record = measure_once(m, s, env, run_id)
        record["machine_load_before"] = None if load is None else round(load, 3)
        record["attempt"] = attempt
        if best is None or _better(record, best):
            best = record
        record["disturbed"] = disturbance(record) > s.disturbed_above
        if not record["disturbed"] or not record.get("ok") or record["duration_s"] > RETRY_UNDER:
            break
        if attempt <= s.retries:
            print(f"[bench] {m.label}: other processes used {100 * disturbance(record):.0f}% CPU during "
                  f"the measurement; measuring again", file=sys.stderr, flush=True)
    assert best is not None
    best["disturbed"] = disturbance(best) > s.disturbed_above
    return best


def measure_once(m: Measurement, s: Settings, env: dict[str, Any], run_id: str) -> dict[str, Any]:
    if m.scenario in ("bridge", "scaleout"):
        return pubsub.measure_once(m, s, env, run_id)
    if m.scenario == "abuse":
        return abuse.measure_once(m, s, env, run_id)
    if m.scenario == "reconnect":
        return storms.measure_reconnect(m, s, env, run_id)
    spec = SERVERS[m.server]
    started = time.monotonic()
    record: dict[str, Any] = {
        "scenario": m.scenario,
        "server": m.server,
        "transport": m.transport,
        "clients": m.clients,
        "calibration": m.calibration,
        "size": s.size,
    }
    if m.scenario == "fanout":
        record |= {"messages": s.messages, "window": s.window}
    elif m.scenario == "echo":
        record |= {"duration": s.echo_duration, "warmup": s.echo_warmup, "round": m.round,
                   "rounds": m.rounds}
    elif m.scenario == "steady":
        record |= {"rate": m.rate, "warmup": s.steady_warmup, "duration": s.steady_seconds}
    elif m.scenario == "storm":
        record |= {"round": m.round, "rounds": m.rounds}
    else:
        record |= {"idle_wait": s.idle_wait}
    rate = f"-{m.rate}" if m.scenario == "steady" else ""
    log_path = s.results_dir / "logs" / (f"{run_id}-{m.scenario}-{m.clients}{rate}-{m.server}-{m.transport}"
                                         f"-{m.round}.log")
    print(f"[bench] {m.label}: starting {m.server}", file=sys.stderr, flush=True)
    try:
        with running(spec, log_path, messages=s.messages, size=s.size, pythonpath=s.sockway_path,
                     stop_timeout=3.0 if m.scenario == "steady" else 10.0) as server:
            record["server_pid"] = server.pid
            result = _run_generator(_generator_config(m, s, server.port, server.pid), _hard_timeout(m, s))
            if not server.alive():
                result["ok"] = False
                result["error"] = (result.get("error", "") + "; " if result.get("error") else "") \
                    + server.died_message()
    except ServerError as exc:
        result = {"ok": False, "error": str(exc)}
    record |= result
    record["duration_s"] = round(time.monotonic() - started, 2)
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["run_id"] = run_id
    record |= env
    if not record.get("ok"):
        print(f"[bench] {m.label}: FAILED: {record.get('error')}", file=sys.stderr, flush=True)
    return record


def run_all(settings: Settings, runs: list[Measurement], out_path: Path) -> list[dict[str, Any]]:
    env = environment(settings)
    run_id = out_path.stem
    records = []
    started = time.monotonic()
    for i, m in enumerate(runs, 1):
        print(f"[bench] ({i}/{len(runs)}, {time.monotonic() - started:.0f}s) {m.label}",
              file=sys.stderr, flush=True)
        record = measure(m, settings, env, run_id)
        records.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        with open(out_path, "a") as f:
            f.write(line + "\n")
    return records
