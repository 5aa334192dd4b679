"""The abuse scenario: normal clients measured before, during and after a mix of hostile
clients, against one ``sockway serve`` process (see benchmarks/README.md).

Processes, each started here and stopped by PID whatever happens:

- the gateway: ``sockway serve`` with :func:`gateway_config` (a channels endpoint, an
  echo endpoint, SockJS on both, a namespace that keeps history, a TCP tunnel), allowed
  ``gateway_nofile`` descriptors (soft and hard limit);
- the normal clients: gen/abuse_clients.js (subscribers, a paced publisher, paced echo
  clients, a newcomer a second), one Node process;
- one process per abuser kind: benchmarks/abusers.py.

The timeline: the gateway answers its health URL; the normal clients connect and
subscribe; the abusers build their payloads; then ``go``: the *before* phase (20% of
``duration``), the abusers start (*during*, 40%), the abusers stop and close everything
(*after*, 40%); then the publishing stops and, once every message arrived (or 10 s
passed), the normal clients report. Every second the gateway's RSS, open descriptors
and CPU are read from /proc, with every process's CPU, and a progress line is printed.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.abusers import KINDS
from benchmarks.pubsub import Child, Gateway, _machine_busy, proc_cpu
from benchmarks.servers import BENCH_DIR, ServerError, free_port, node_binary, python_binary

if TYPE_CHECKING:
    from benchmarks.runner import Measurement, Settings

__all__ = ["KINDS", "PHASES", "TARGETS", "measure_once", "plan", "targets"]

GEN = BENCH_DIR / "gen" / "abuse_clients.js"
PHASES = ("before", "during", "after")
SHARES = (0.2, 0.4, 0.4)
"""Each phase's share of ``duration``."""
CHANNEL = "bench"
FLOOD_CHANNELS = [f"flood:{i}" for i in range(4)]
FLOOD_HISTORY = 8
"""Publications each flooded channel keeps: 4 x 8 x 64 KiB = 2 MiB of JSON at most, what
the gateway may legitimately hold after the flood (about 4% of its RSS with the normal
clients connected: within the 10% the RSS target allows)."""
MAX_DATA = 65536
"""The namespace's ``max_data_size`` (sockway's default)."""
MAX_MESSAGE = 1 << 20
"""The endpoints' ``max_message_size`` (sockway's default)."""
SETTLE = 5
"""Samples (seconds) at the end of a phase that give its RSS and descriptor figures."""
TARGETS = {
    "zero_losses": "zero losses (publications, echoes, connections closed, in every phase)",
    "p99": "delivery p99 during abuse <= 2x before",
    "echo_p99": "echo p99 during abuse <= 2x before",
    "rss": "RSS after within 10% of before",
    "fds": "descriptors after back to baseline",
    "newcomers": "newcomers during abuse: each echoed within 2 s (the tests' bar)",
}
"""The scenario's targets and their titles (reported, not asserted)."""
NEWCOMER_BAR_MS = 2000.0


def plan(s: Settings) -> list[Measurement]:
    from benchmarks.runner import Measurement

    return [Measurement("abuse", "sockway", "raw", s.abuse_subscribers)]


def gateway_config(tunnel_port: int) -> str:
    return f"""
[server]
shutdown_timeout = 1

[[namespace]]
name = ""
subscribe = "open"
publish = "open"

[[namespace]]
name = "flood"
subscribe = "open"
publish = "open"
history_size = {FLOOD_HISTORY}
max_data_size = {MAX_DATA}

[[endpoint]]
prefix = "/ch"
mode = "channels"
max_message_size = {MAX_MESSAGE}

[[endpoint]]
prefix = "/echo"
mode = "echo"
max_message_size = {MAX_MESSAGE}

[[tunnel]]
listen = "127.0.0.1:{tunnel_port}"
channel = "tunnel"
"""


def abuser_config(kind: str, s: Settings, port: int, tunnel_port: int) -> dict[str, Any]:
    """What each abuser does at ``abuse_scale`` 1 (counts and volumes scale; rates too)."""
    k = max(0.0, s.abuse_scale)

    def count(n: int) -> int:
        return max(1, round(n * k))

    def volume(n: int, least: int) -> int:
        return max(least, round(n * k))

    cfg: dict[str, Any] = {"kind": kind, "host": "127.0.0.1", "port": port, "max_seconds": s.abuse_duration + 120}
    if kind == "silent":
        cfg |= {"connections": count(3000), "per_address": 1000}
    elif kind == "slow-heads":
        cfg |= {"connections": count(300), "per_address": 100}
    elif kind == "slow-bodies":
        cfg |= {"connections": count(100), "per_address": 100, "sockjs_endpoint": "/ch",
                "body_length": MAX_MESSAGE}
    elif kind == "fragments":
        cfg |= {"connections": count(10), "echo_endpoint": "/echo",
                "message_bytes": volume(MAX_MESSAGE - 4096, 4096)}
    elif kind == "history-flood":
        cfg |= {"rate": max(0.5, 10 * k), "data_bytes": MAX_DATA - 1, "channels": FLOOD_CHANNELS,
                "channels_endpoint": "/ch"}
    elif kind == "newline-flood":
        cfg |= {"burst_bytes": volume(2 << 20, 65536), "interval": 10.0, "tunnel_port": tunnel_port}
    elif kind == "sockjs-churn":
        cfg |= {"connections": 4, "rate": max(1.0, 100 * k), "sockjs_endpoint": "/ch"}
    elif kind == "non-reader":
        cfg |= {"connections": count(5), "channels_endpoint": "/ch", "channel": CHANNEL,
                "flood_channels": FLOOD_CHANNELS}
    return cfg


def generator_config(m: Measurement, s: Settings, port: int) -> dict[str, Any]:
    return {
        "label": "abuse",
        "host": "127.0.0.1",
        "port": port,
        "channelEndpoint": "/ch",
        "echoEndpoint": "/echo",
        "channel": CHANNEL,
        "subscribers": m.clients,
        "echoClients": s.echo_clients,
        "publishRate": s.abuse_publish_rate,
        "echoRate": s.abuse_echo_rate,
        "size": s.size,
        # room for every publication of the run, and then some
        "maxMessages": math.ceil(s.abuse_publish_rate * (s.abuse_duration * 1.25 + 30)) + 10,
        "sourcePrefix": "127.0.1.",
        "probePrefix": "127.0.2.",
        "probeInterval": 1.0,
        "probeTimeout": 10.0,
        "connectConcurrency": s.connect_concurrency,
        "connectTimeout": 60,
        "subscribeTimeout": 60,
        "subscribeConcurrency": s.subscribe_concurrency,
        "drainTimeout": 10,
    }


# -- the gateway from /proc ------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sampler:
    """Once a second: the gateway's RSS and descriptors, and every process's CPU over the
    second (a share of one core)."""

    def __init__(self, gateway: int, generator: int, abusers: dict[str, int]) -> None:
        self.pids = {"gateway": gateway, "generator": generator, **{f"abuser {k}": p for k, p in abusers.items()}}
        self.gateway = gateway
        self.last = self._cpu()

    def _cpu(self) -> tuple[float, dict[str, float | None], float | None]:
        return time.monotonic(), {name: proc_cpu(pid) for name, pid in self.pids.items()}, _machine_busy()

    def sample(self) -> dict[str, Any]:
        now = self._cpu()
        t0, before, machine0 = self.last
        t1, after, machine1 = now
        self.last = now
        wall = max(1e-3, t1 - t0)
        cpu: dict[str, float | None] = {}
        for name in self.pids:
            a, b = before.get(name), after.get(name)
            cpu[name] = None if a is None or b is None else round((b - a) / wall, 3)
        abusers = [v for k, v in cpu.items() if k.startswith("abuser") and v is not None]
        known = sum(v for v in cpu.values() if v is not None)
        machine = None if machine0 is None or machine1 is None else (machine1 - machine0) / wall
        return {
            "rss_kib": rss_kib(self.gateway),
            "fds": open_fds(self.gateway),
            "gateway_cpu": cpu["gateway"],
            "generator_cpu": cpu["generator"],
            "abusers_cpu": round(sum(abusers), 3) if abusers else 0.0,
            "abuser_cpu": {k.removeprefix("abuser "): v for k, v in cpu.items() if k.startswith("abuser")},
            "others_cpu": None if machine is None else round(max(0.0, machine - known), 3),
        }


class Talker(Child):
    """A child process that is told more than ``go``."""

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it has exited; its result says why

    def pending(self, wait: float = 0.0) -> list[dict]:
        """The JSON lines it printed since the last call, waiting up to ``wait`` seconds
        for the first; ``{"exited": True}`` last when it has exited."""
        out: list[dict] = []
        while True:
            try:
                line = self.lines.get(timeout=wait) if wait and not out else self.lines.get_nowait()
            except queue.Empty:
                return out
            if line is None:
                self.lines.put(None)  # for result()
                out.append({"exited": True})
                return out
            if line.startswith("{"):
                obj = json.loads(line)
                if "tick" not in obj:
                    self.last = obj
                out.append(obj)


# -- one measurement ---------------------------------------------------------------------------------


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def _ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.3g} ms" if value < 1000 else f"{value:,.0f} ms"


def _progress(phase: str, left: float, sample: dict) -> str:
    parts = [f"[abuse] {phase:<6} {left:4.0f}s left",
             f"p99 {_ms(sample.get('p99_ms'))} (echo {_ms(sample.get('echo_p99_ms'))})",
             f"behind {sample.get('behind', '-')}",
             f"newcomer {_ms(sample.get('newcomer_ms'))}"
             + (f" ({sample['newcomers_failed']} failed)" if sample.get("newcomers_failed") else ""),
             f"RSS {_mib(sample.get('rss_kib'))}", f"fds {sample.get('fds', '-')}",
             "CPU gateway {} generator {} abusers {}".format(
                 *(f"{100 * v:.0f}%" if isinstance(v, int | float) else "-"
                   for v in (sample.get("gateway_cpu"), sample.get("generator_cpu"), sample.get("abusers_cpu"))))]
    if sample.get("closed"):
        parts.append(f"closed {sample['closed']}")
    return " | ".join(parts)


def _log_counts(path: Path, offsets: list[int]) -> list[dict[str, int]]:
    """Lines the gateway logged in each phase (between the byte offsets), and how many of
    them were tracebacks or ERROR lines."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    bounds = [*offsets, len(data)]
    out = []
    for a, b in itertools.pairwise(bounds):
        chunk = data[a:b]
        out.append({"lines": chunk.count(b"\n"), "tracebacks": chunk.count(b"Traceback"),
                    "errors": chunk.count(b" ERROR ") + chunk.count(b'"level": "ERROR"')})
    return out


def _settled(samples: list[dict], key: str, how) -> float | None:
    values = [x[key] for x in samples[-SETTLE:] if isinstance(x.get(key), int | float)]
    return how(values) if values else None


def _mean(samples: list[dict], key: str) -> float | None:
    values = [x[key] for x in samples if isinstance(x.get(key), int | float)]
    return round(statistics.fmean(values), 3) if values else None


def _run_phases(gateway: Gateway, generator: Talker, abusers: dict[str, Talker], lengths: list[float],
                sampler: Sampler) -> tuple[list[dict], list[int], str | None]:
    """The three phases, a sample a second; returns the samples, the gateway log's size at
    each phase's start, and why it ended early (or None)."""
    timeline: list[dict] = []
    log_offsets: list[int] = []
    started = time.monotonic()
    end = started
    for index, (name, length) in enumerate(zip(PHASES, lengths, strict=True)):
        log_offsets.append(gateway.log_path.stat().st_size if gateway.log_path.exists() else 0)
        if index == 1:
            generator.say("phase 1")
            for abuser in abusers.values():
                abuser.go()
        elif index == 2:
            for abuser in abusers.values():
                abuser.say("stop")
            generator.say("phase 2")
        print(f"[abuse] {name}: {length:.0f}s" + (f", abusers: {', '.join(abusers) or 'none'}" if index == 1 else ""),
              file=sys.stderr, flush=True)
        end += length
        while True:
            # A sample per tick of the generator (a second), so that the gateway's figures
            # and the normal clients' cover the same second.
            lines = generator.pending(wait=2.0)
            sample = {"t": round(time.monotonic() - started, 2), "phase": name, **sampler.sample()}
            failed = 0
            for line in lines:
                if line.get("exited") or "ok" in line:
                    return timeline, log_offsets, f"the normal clients' generator stopped: {line.get('error')}"
                if "tick" in line:
                    failed += line["tick"].get("newcomers_failed") or 0
                    sample |= {k: v for k, v in line["tick"].items() if k not in ("phase", "newcomers_failed")}
            sample["newcomers_failed"] = failed
            timeline.append(sample)
            print(_progress(name, max(0.0, end - time.monotonic()), sample), file=sys.stderr, flush=True)
            if gateway.proc.poll() is not None:
                return timeline, log_offsets, gateway._died()
            if time.monotonic() >= end - 0.5:
                break
    return timeline, log_offsets, None


def targets(phases: dict[str, dict], result: dict) -> dict[str, dict]:
    """The scenario's targets, measured (reported, not asserted)."""
    out: dict[str, dict] = {}
    losses = sum((p.get("losses") or 0) + (p.get("echo_losses") or 0) for p in phases.values())
    closed = sum(p.get("connections_closed") or 0 for p in phases.values())
    broken = sum(result.get(key) or 0 for key in ("duplicates", "order_errors", "echo_order_errors"))
    out["zero_losses"] = {"measured": losses, "connections_closed": closed, "duplicates_or_reordered": broken,
                          "met": losses == 0 and closed == 0 and broken == 0 and bool(phases)}
    before, during, after = (phases.get(name, {}) for name in PHASES)
    for key, field in (("p99", "p99_ms"), ("echo_p99", "echo_p99_ms")):
        a, b = before.get(field), during.get(field)
        ratio = round(b / a, 2) if isinstance(a, int | float) and isinstance(b, int | float) and a > 0 else None
        out[key] = {"before_ms": a, "during_ms": b, "after_ms": after.get(field), "ratio": ratio,
                    "met": ratio is not None and ratio <= 2.0}
    rss_a, rss_b = before.get("rss_settled_kib"), after.get("rss_settled_kib")
    ratio = round(rss_b / rss_a, 3) if rss_a and rss_b else None
    out["rss"] = {"before_kib": rss_a, "during_max_kib": during.get("rss_max_kib"), "after_kib": rss_b,
                  "ratio": ratio, "met": ratio is not None and ratio <= 1.10}
    fds_a, fds_b = before.get("fds_baseline"), after.get("fds_settled")
    out["fds"] = {"before": fds_a, "during_max": during.get("fds_max"), "after": fds_b,
                  "met": fds_a is not None and fds_b is not None and fds_b <= fds_a}
    ok, failed, slowest = (during.get(k) for k in ("newcomers_ok", "newcomers_failed", "newcomer_max_ms"))
    out["newcomers"] = {"ok": ok, "failed": failed, "slowest_ms": slowest, "first_failure":
                        during.get("newcomer_first_failure"),
                        "met": bool(ok) and failed == 0 and isinstance(slowest, int | float)
                        and slowest <= NEWCOMER_BAR_MS}
    return out


def measure_once(m: Measurement, s: Settings, env: dict[str, Any], run_id: str) -> dict[str, Any]:
    started = time.monotonic()
    lengths = [s.abuse_duration * share for share in SHARES]
    record: dict[str, Any] = {
        "scenario": "abuse", "server": "sockway", "transport": "raw", "clients": m.clients, "calibration": False,
        "size": s.size, "duration": s.abuse_duration, "phase_seconds": dict(zip(PHASES, lengths, strict=True)),
        "subscribers": m.clients, "echo_clients": s.echo_clients, "publish_rate": s.abuse_publish_rate,
        "echo_rate": s.abuse_echo_rate, "abusers": list(s.abusers), "abuse_scale": s.abuse_scale,
        "gateway_nofile": s.gateway_nofile,
    }
    workdir = Path(tempfile.mkdtemp(prefix="sockway-bench-"))
    log_path = s.results_dir / "logs" / f"{run_id}-abuse-{m.clients}.log"
    tunnel_port = free_port()
    gateway: Gateway | None = None
    children: list[Talker] = []
    print(f"[bench] {m.label}: starting", file=sys.stderr, flush=True)
    try:
        gateway = Gateway(gateway_config(tunnel_port), workdir, log_path, pythonpath=s.sockway_path,
                          nofile=s.gateway_nofile)
        gateway.wait_ready()
        record["server_pid"] = gateway.pid
        generator = Talker("generator", [node_binary(), str(GEN), json.dumps(generator_config(m, s, gateway.port))])
        children.append(generator)
        ready = generator.wait_for("ready", 150)
        abusers: dict[str, Talker] = {}
        for kind in s.abusers:
            config = abuser_config(kind, s, gateway.port, tunnel_port)
            abusers[kind] = Talker(f"abuser {kind}", [python_binary(), "-m", "benchmarks.abusers",
                                                      json.dumps(config)])
            children.append(abusers[kind])
            record.setdefault("abuser_config", {})[kind] = {k: v for k, v in config.items()
                                                          if k not in ("kind", "host", "port", "max_seconds")}
        for abuser in abusers.values():
            abuser.wait_for("ready", 30)
        sampler = Sampler(gateway.pid, generator.pid, {k: a.pid for k, a in abusers.items()})
        generator.go()
        generator.wait_for("started", 30)
        timeline, log_offsets, stopped = _run_phases(gateway, generator, abusers, lengths, sampler)
        for abuser in abusers.values():
            abuser.say("stop")
        generator.say("stop")
        result = generator.result(60)
        reports = {kind: abuser.result(30) for kind, abuser in abusers.items()}
        record |= _summarize(result, timeline, log_offsets, log_path, reports)
        record["connect_s"] = ready.get("connect_s")
        if stopped:
            record["ok"] = False
            record["error"] = stopped
        elif gateway.proc.poll() is not None:
            record["ok"] = False
            record["error"] = gateway._died()
    except ServerError as exc:
        record |= {"ok": False, "error": str(exc)}
    finally:
        for child in children:
            child.stop()
        if gateway is not None:
            gateway.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    record["duration_s"] = round(time.monotonic() - started, 2)
    record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["run_id"] = run_id
    record |= env
    if not record.get("ok"):
        print(f"[bench] {m.label}: FAILED: {record.get('error')}", file=sys.stderr, flush=True)
    return record


def _summarize(result: dict, timeline: list[dict], log_offsets: list[int], log_path: Path,
               reports: dict[str, dict]) -> dict[str, Any]:
    phases: dict[str, dict] = {}
    logs = _log_counts(log_path, log_offsets)
    for i, name in enumerate(PHASES):
        samples = [x for x in timeline if x["phase"] == name]
        phase = dict((result.get("phases") or {}).get(name) or {})
        if not samples and not phase:
            continue
        phase |= {
            "rss_settled_kib": _settled(samples, "rss_kib", statistics.median),
            "fds_baseline": _settled(samples, "fds", max),
            "fds_settled": _settled(samples, "fds", min),
            "fds_max": max((x["fds"] for x in samples if isinstance(x.get("fds"), int)), default=None),
            "gateway_cpu": _mean(samples, "gateway_cpu"),
            "generator_cpu": _mean(samples, "generator_cpu"),
            "abusers_cpu": _mean(samples, "abusers_cpu"),
            "others_cpu": _mean(samples, "others_cpu"),
        }
        phase["rss_max_kib"] = max((x["rss_kib"] for x in samples if isinstance(x.get("rss_kib"), int)),
                                   default=None)
        if i < len(logs):
            phase |= {f"log_{k}": v for k, v in logs[i].items()}
        phases[name] = phase
    others = [p.get("others_cpu") for p in phases.values() if isinstance(p.get("others_cpu"), int | float)]
    out: dict[str, Any] = {
        "ok": bool(result.get("ok")) and all(r.get("ok") for r in reports.values()),
        "phases": phases,
        "targets": targets(phases, result),
        "abuse": reports,
        "timeline": timeline,
        "other_cpu_util": max(others, default=None),
    }
    for key in ("published", "drain_s", "duplicates", "order_errors", "echo_order_errors", "bad_messages",
                "server_errors", "closed", "first_error"):
        if key in result:
            out[key] = result[key]
    if not result.get("ok"):
        out["error"] = f"normal clients: {result.get('error')}"
    failed = {k: r.get("error") for k, r in reports.items() if not r.get("ok")}
    if failed:
        out["error"] = ((out.get("error") or "") + f" abusers failed: {failed}").strip()
    for name, phase in phases.items():
        for key in ("p50_ms", "p99_ms", "echo_p50_ms", "echo_p99_ms", "losses", "echo_losses"):
            out[f"{name}_{key}"] = phase.get(key)
    return out
