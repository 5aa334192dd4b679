"""Command line of the benchmark suite."""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks import abuse, pubsub, storms
from benchmarks.report import render
from benchmarks.runner import Settings, plan, run_all
from benchmarks.servers import BENCH_DIR, ROOT, SERVERS, ServerError, node_binary

__all__ = ["main"]

SCENARIOS = ("calibrate", "fanout", "echo", "idle", "bridge", "scaleout", "abuse", "steady", "storm", "reconnect")
DEFAULT_SCENARIOS = ("calibrate", "fanout", "echo", "idle")
"""bridge, scaleout, abuse, steady, storm and reconnect take minutes of their own: run when named
(``make bench-perf``: calibrate,steady,storm,reconnect)."""


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers")
    return values


def _names(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        if names == ["all"]:
            return list(choices)
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(unknown)} (choose from {', '.join(choices)})")
        return names
    return parse


def _pairs(text: str) -> list[tuple[int, int]]:
    """"1000x100,5000x100" -> [(1000, 100), (5000, 100)]: clients x messages per second."""
    pairs = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        try:
            clients, rate = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected CLIENTSxRATE, like 1000x100, got {item!r}") from None
        if clients < 1 or rate < 1:
            raise argparse.ArgumentTypeError(f"expected positive numbers in {item!r}")
        pairs.append((clients, rate))
    if not pairs:
        raise argparse.ArgumentTypeError("expected at least one CLIENTSxRATE")
    return pairs


def _abusers(text: str) -> list[str]:
    return [] if text.strip() == "none" else _names(abuse.KINDS)(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Fan-out, echo round trips and idle memory of sockway, against Node's ws (raw "
                    "WebSocket) and sockjs-node (SockJS over WebSocket) in the same run; with --scenarios "
                    "bridge,scaleout: publishing into a channel through ZeroMQ and the HTTP API against the "
                    "edge's own path, and one node against two over Redis and NATS; with --scenarios "
                    "steady,storm,reconnect: latency at fixed publishing rates against ws, sockjs-node and "
                    "socket.io, connection storms, and a gateway restarted under 10,000 subscribers. Prints one "
                    "JSON line per measurement, then a table; saves both under benchmarks/results/.",
    )
    p.add_argument("--quick", action="store_true",
                   help="a short run (about a minute): 200 and 1000 fan-out clients, 200 messages, "
                        "one 3 s echo round, 2000 idle connections; bridge: 200 and 1000 subscribers, 300 "
                        "messages; scaleout: 1000 and 2000 clients, 300 messages; steady: 1000x100 and 1000x1000, "
                        "1 + 2 s each; storm: 2000 connections, one round; reconnect: 1000 subscribers")
    p.add_argument("--scenarios", type=_names(SCENARIOS), default=list(DEFAULT_SCENARIOS),
                   help="comma-separated subset of: " + ", ".join(SCENARIOS) + ", or all (default: "
                        + ",".join(DEFAULT_SCENARIOS) + "; bridge and scaleout run when named)")
    p.add_argument("--servers", type=_names(("sockway", "ws", "sockjs-node", "socket.io")),
                   default=["sockway", "ws", "sockjs-node", "socket.io"],
                   help="servers to measure (default: all; socket.io in the steady scenario only)")
    p.add_argument("--transports", type=_names(("raw", "sockjs", "socketio")), default=["raw", "sockjs", "socketio"],
                   help="raw (raw WebSocket, vs ws), sockjs (SockJS over WebSocket, vs sockjs-node), socketio "
                        "(Socket.IO over WebSocket: the steady scenario's third peer)")
    p.add_argument("--clients", type=_ints, help="fan-out client counts (default 1000,5000)")
    p.add_argument("--messages", type=int, help="fan-out messages published (default 1000)")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (default 64)")
    p.add_argument("--window", type=int, default=100,
                   help="fan-out: messages the publisher may have in flight, published but not yet "
                        "received back by itself (default 100)")
    p.add_argument("--echo-clients", type=int, default=100, help="echo clients (default 100)")
    p.add_argument("--echo-duration", type=float, help="echo: seconds measured per round (default 5)")
    p.add_argument("--echo-warmup", type=float, help="echo: seconds of warm-up per round (default 1)")
    p.add_argument("--echo-rounds", type=int,
                   help="echo: rounds, sockway and peers alternating; the table shows medians (default 3)")
    p.add_argument("--idle-connections", type=int, help="idle connections (default 10000)")
    p.add_argument("--idle-wait", type=float, help="idle: seconds held before RSS is read (default 5)")
    bridge = p.add_argument_group(
        "bridge and scaleout", "publications into a channel of a channels endpoint (see benchmarks/README.md); "
        "--size, --window, --stall-timeout, --connect-concurrency apply too")
    bridge.add_argument("--bridge-clients", type=_ints, help="bridge: subscriber counts (default 1000,5000)")
    bridge.add_argument("--bridge-messages", type=int, help="bridge: messages published at full speed (default 1000)")
    bridge.add_argument("--bridge-paths", type=_names(pubsub.BRIDGE_PATHS), default=list(pubsub.BRIDGE_PATHS),
                        help="bridge: how publications come in, comma-separated subset of "
                             + ", ".join(pubsub.BRIDGE_PATHS) + " (default: all)")
    bridge.add_argument("--http-clients", type=int, default=4,
                        help="bridge: keep-alive HTTP connections publishing concurrently (default 4)")
    bridge.add_argument("--batch", type=int, default=25,
                        help="bridge: publish commands per /api/commands request (default 25)")
    bridge.add_argument("--paced-deliveries", type=float, default=50_000,
                        help="after the full-speed phase, a paced phase measures the latency of a gateway "
                             "that is not saturated: publications at this many deliveries per second "
                             "(rate = this / subscribers, at most --paced-max-rate; default 50000)")
    bridge.add_argument("--paced-max-rate", type=float, default=50.0,
                        help="paced phase: publications per second at most (default 50)")
    bridge.add_argument("--paced-seconds", type=float,
                        help="paced phase: its length (default 2; --quick 1; 0: no paced phase)")
    bridge.add_argument("--scaleout-clients", type=_ints, help="scaleout: client counts (default 5000,10000)")
    bridge.add_argument("--scaleout-messages", type=int,
                        help="scaleout: messages published at full speed (default 1000)")
    bridge.add_argument("--brokers", type=_names(pubsub.BROKERS), default=list(pubsub.BROKERS),
                        help="scaleout: brokers, each started on a free port (default memory,redis,nats)")
    bridge.add_argument("--nodes", type=_ints, default=[1, 2],
                        help="scaleout: gateway processes, sockway serve --workers N (default 1,2; the memory "
                             "broker runs 1 only)")
    bridge.add_argument("--subscribe-concurrency", type=int, default=50,
                        help="subscribes in flight at once (default 50; more than ~100 makes a Redis-backed node "
                             "refuse some as unavailable: see benchmarks/README.md)")
    hostile = p.add_argument_group(
        "abuse", "--scenarios abuse: normal clients of one gateway measured before, during and after a mix of "
        "hostile clients (see benchmarks/README.md). N subscribers of a channel get paced publications, "
        "--echo-clients echo clients send paced messages, a newcomer connects every second; the phases take "
        "20%, 40% and 40% of --duration. Reports losses, latency p50/p99 per phase, the gateway's RSS, "
        "descriptors and CPU every second, and whether the targets are met: zero losses, p99 during <= 2x "
        "before, RSS after within 10% of before, descriptors back to baseline. --size applies too")
    hostile.add_argument("--duration", type=float, default=300.0,
                         help="abuse: seconds of the three phases together (default 300: 60 before, 120 during, "
                              "120 after); connecting and draining come on top")
    hostile.add_argument("--subscribers", type=int, default=1000, help="abuse: subscribers (default 1000)")
    hostile.add_argument("--publish-rate", type=float, default=50.0,
                         help="abuse: publications per second into their channel (default 50)")
    hostile.add_argument("--echo-rate", type=float, default=10.0,
                         help="abuse: messages per second each echo client sends (default 10)")
    hostile.add_argument("--abusers", type=_abusers, default=list(abuse.KINDS),
                         help="abuse: which abusers, comma-separated subset of " + ", ".join(abuse.KINDS)
                              + " (default: all at once); none: the same phases without abuse, what the "
                              "machine's own noise does to the figures")
    hostile.add_argument("--abuse-scale", type=float, default=1.0,
                         help="abuse: multiplies every abuser's connections, rates and volumes (default 1: "
                              "3000 silent sockets, 300 slow heads, 100 slow bodies, 10 fragmented 1 MiB "
                              "messages, 10 history publications/s, 2 MiB of newlines every 10 s, 100 SockJS "
                              "sessions/s, 5 non-readers)")
    hostile.add_argument("--gateway-nofile", type=int, default=4096,
                         help="abuse: descriptors the gateway may open (its soft and hard RLIMIT_NOFILE; "
                              "default 4096)")
    rates = p.add_argument_group(
        "steady, storm and reconnect", "steady: a paced fan-out, every delivery timed from its send time, against ws, "
        "sockjs-node and socket.io; storm: connects/s and server CPU per connect while opening N connections; "
        "reconnect: a gateway restarted under 10,000 channel subscribers that recover from their last offset, "
        "against the time a restarted ws server takes to accept as many (see benchmarks/README.md). "
        "--size, --connect-concurrency and --subscribe-concurrency apply too")
    rates.add_argument("--steady", type=_pairs, metavar="CLIENTSxRATE,...",
                       help="steady: client counts and messages per second (default "
                            + ",".join(f"{c}x{r}" for c, r in storms.STEADY_DEFAULT) + "; --quick "
                            + ",".join(f"{c}x{r}" for c, r in storms.STEADY_QUICK) + ")")
    rates.add_argument("--steady-seconds", type=float, help="steady: seconds measured per rate (default 10; --quick 2)")
    rates.add_argument("--steady-warmup", type=float,
                       help="steady: seconds published before the measured ones (default 2; --quick 1)")
    rates.add_argument("--steady-bound-ms", type=float, default=1000.0,
                       help="steady: a rate is 'saturated' when p99 is beyond this, or the deliveries outstanding "
                            "exceed what the rate produces in this time (then publishing stops early; default 1000)")
    rates.add_argument("--storm-connections", type=int, help="storm: connections opened (default 10000; --quick 2000)")
    rates.add_argument("--storm-rounds", type=int,
                       help="storm: rounds, sockway and peers alternating; the table shows medians (default 3; "
                            "--quick 1)")
    rates.add_argument("--reconnect-subscribers", type=int,
                       help="reconnect: channel subscribers, and ws connections (default 10000; --quick 1000)")
    rates.add_argument("--reconnect-rate", type=float, default=20.0,
                       help="reconnect: publications per second into the channel, restart included (default 20)")
    rates.add_argument("--reconnect-settle", type=float,
                       help="reconnect: seconds of publishing before the restart, and again once every client is "
                            "back (default 3; --quick 2)")
    rates.add_argument("--reconnect-broker", choices=("redis", "nats"), default="redis",
                       help="reconnect: the broker both gateway nodes share, started on a free port (default redis)")
    p.add_argument("--stall-timeout", type=float, default=20,
                   help="fan-out: fail when nothing is delivered for this many seconds (default 20)")
    p.add_argument("--connect-concurrency", type=int, default=256,
                   help="handshakes in progress at once (default 256)")
    p.add_argument("--retries", type=int, default=1,
                   help="measure again (this many times at most) when other processes used more than "
                        "--disturbed-above of a core during the window; the least disturbed is kept "
                        "(default 1)")
    p.add_argument("--disturbed-above", type=float, default=0.25,
                   help="CPU of other processes, in cores, above which a window counts as disturbed "
                        "(default 0.25)")
    p.add_argument("--quiet-wait", type=float, default=30,
                   help="seconds to wait, before each measurement, for other processes to calm down "
                        "below --disturbed-above (default 30; 0 to not wait)")
    p.add_argument("--sockway-rev", metavar="REV",
                   help="measure this committed revision of sockway (its src/ from `git archive`) instead "
                        "of the working tree")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results",
                   help="where the JSON lines, table and server logs go (default benchmarks/results)")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    quick = args.quick

    def pick(value, full, short):
        return value if value is not None else (short if quick else full)

    return Settings(
        fanout_clients=pick(args.clients, [1000, 5000], [200, 1000]),
        messages=pick(args.messages, 1000, 200),
        size=args.size,
        window=args.window,
        echo_clients=args.echo_clients,
        echo_duration=pick(args.echo_duration, 5.0, 3.0),
        echo_warmup=pick(args.echo_warmup, 1.0, 1.0),
        echo_rounds=pick(args.echo_rounds, 3, 1),
        idle_connections=pick(args.idle_connections, 10000, 2000),
        idle_wait=pick(args.idle_wait, 5.0, 2.0),
        scenarios=args.scenarios,
        servers=args.servers,
        transports=args.transports,
        stall_timeout=args.stall_timeout,
        connect_concurrency=args.connect_concurrency,
        results_dir=args.results_dir,
        quick=quick,
        retries=max(0, args.retries),
        disturbed_above=args.disturbed_above,
        quiet_wait=max(0.0, args.quiet_wait),
        bridge_clients=pick(args.bridge_clients, [1000, 5000], [200, 1000]),
        bridge_messages=pick(args.bridge_messages, 1000, 300),
        bridge_paths=args.bridge_paths,
        http_clients=max(1, args.http_clients),
        batch=max(1, args.batch),
        paced_deliveries=max(1.0, args.paced_deliveries),
        paced_max_rate=max(0.1, args.paced_max_rate),
        paced_seconds=max(0.0, pick(args.paced_seconds, 2.0, 1.0)),
        scaleout_clients=pick(args.scaleout_clients, [5000, 10000], [1000, 2000]),
        scaleout_messages=pick(args.scaleout_messages, 1000, 300),
        brokers=args.brokers,
        nodes=args.nodes,
        subscribe_concurrency=max(1, args.subscribe_concurrency),
        abuse_duration=args.duration,
        abuse_subscribers=args.subscribers,
        abuse_publish_rate=args.publish_rate,
        abuse_echo_rate=args.echo_rate,
        abusers=args.abusers,
        abuse_scale=args.abuse_scale,
        gateway_nofile=args.gateway_nofile,
        steady=pick(args.steady, list(storms.STEADY_DEFAULT), list(storms.STEADY_QUICK)),
        steady_seconds=max(0.5, pick(args.steady_seconds, 10.0, 2.0)),
        steady_warmup=max(0.0, pick(args.steady_warmup, 2.0, 1.0)),
        steady_bound_ms=max(1.0, args.steady_bound_ms),
        storm_connections=max(1, pick(args.storm_connections, 10000, 2000)),
        storm_rounds=max(1, pick(args.storm_rounds, 3, 1)),
        reconnect_subscribers=max(1, pick(args.reconnect_subscribers, 10000, 1000)),
        reconnect_rate=max(0.1, args.reconnect_rate),
        reconnect_broker=args.reconnect_broker,
        reconnect_before=max(0.0, pick(args.reconnect_settle, 3.0, 2.0)),
        reconnect_after=max(0.0, pick(args.reconnect_settle, 3.0, 2.0)),
    )


def _abuse_problem(s: Settings) -> str | None:
    """What makes the abuse options unusable, or None."""
    if not s.abuse_duration > 0:
        return "--duration must be a positive number of seconds"
    if s.abuse_subscribers < 1 or s.echo_clients < 1:
        return "--subscribers and --echo-clients must be at least 1"
    if not (s.abuse_publish_rate > 0 and s.abuse_echo_rate > 0):
        return "--publish-rate and --echo-rate must be positive"
    if not s.abuse_scale > 0:
        return "--abuse-scale must be positive"
    if s.gateway_nofile < 64:
        return "--gateway-nofile must be at least 64"
    return None


def _extract_revision(rev: str, into: Path) -> tuple[str, Path]:
    """``git archive`` the src/ tree of ``rev`` into ``into``; returns the full commit id
    and the directory to put on PYTHONPATH."""
    found = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise ValueError(f"--sockway-rev: {rev!r} is not a commit: {found.stderr.strip()}")
    commit = found.stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "src"], cwd=ROOT,
                             capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(into, filter="data")
        else:  # our own repository's archive
            tar.extractall(into)
    return commit, into / "src"


def _raise_fd_limit(needed: int) -> None:
    """Servers and the generator inherit this process's open-files limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(f"[bench] warning: the open-files limit is {soft}; {needed} connections need more "
              f"(raise it with `ulimit -n`)", file=sys.stderr)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that every server and generator started is stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    settings = _settings(args)
    size_floor = len(str(settings.messages)) + 1
    if settings.size < size_floor:
        print(f"--size must be at least {size_floor} (the sequence number and a space)", file=sys.stderr)
        return 2
    if "abuse" in settings.scenarios:
        problem = _abuse_problem(settings)
        if problem:
            print(f"[bench] {problem}", file=sys.stderr)
            return 2
    try:
        node_binary()
    except ServerError as exc:
        print(f"[bench] {exc}", file=sys.stderr)
        return 2
    _raise_fd_limit(max(settings.idle_connections, *settings.fanout_clients, *settings.bridge_clients,
                        *settings.scaleout_clients, settings.abuse_subscribers + settings.echo_clients
                        + round(3500 * settings.abuse_scale), settings.storm_connections,
                        settings.reconnect_subscribers, *(c for c, _ in settings.steady)) + 300)
    snapshot: Path | None = None
    if args.sockway_rev:
        snapshot = Path(tempfile.mkdtemp(prefix="sockway-bench-"))
        try:
            settings.sockway_rev, settings.sockway_path = _extract_revision(args.sockway_rev, snapshot)
        except (ValueError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(snapshot, ignore_errors=True)
            print(f"[bench] {exc}", file=sys.stderr)
            return 2
        print(f"[bench] measuring sockway at {settings.sockway_rev[:12]} (from {snapshot})",
              file=sys.stderr)
    try:
        return _run(settings)
    finally:
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)


def _run(settings: Settings) -> int:
    runs = plan(settings)
    if not runs:
        print("[bench] nothing to run with these --scenarios/--servers/--transports", file=sys.stderr)
        return 2
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = settings.results_dir / f"{stamp}{'-quick' if settings.quick else ''}.jsonl"
    order = [*SERVERS, "channel-blaster", "sink"]  # calibrations of the bridge and scaleout (pubsub.py)
    servers = sorted({m.server for m in runs}, key=order.index)
    print(f"[bench] {len(runs)} measurements ({', '.join(servers)}); results in {out_path}",
          file=sys.stderr, flush=True)
    try:
        records = run_all(settings, runs, out_path)
    except KeyboardInterrupt:
        print("[bench] interrupted; servers stopped", file=sys.stderr)
        return 130
    table = render(records)
    print()
    print(table)
    out_path.with_suffix(".txt").write_text(table + "\n")
    print(f"\n[bench] results: {out_path} and {out_path.with_suffix('.txt')}", file=sys.stderr)
    return 0 if all(r.get("ok") for r in records) else 1
