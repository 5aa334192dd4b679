"""The ``sockway`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sockway import __version__
from sockway.config import ConfigError, load_config

__all__ = ["main"]

WORKER_INDEX = "SOCKWAY_WORKER_INDEX"
"""Set by ``serve --workers`` for each worker: its index (0 to N-1), for ``worker_ports``."""

EPILOG = """\
examples:
  sockway serve                                   # /echo and /chat on 127.0.0.1:8080
  sockway serve --config sockway.toml
  sockway serve --port 9000 --endpoint /chat=broadcast --endpoint /echo=echo
  sockway serve --config sockway.toml --workers 4 # 4 processes on one port (Redis/NATS broker)
  SOCKWAY_PORT=9000 sockway serve                 # environment overrides the file
  sockway testserver                              # the SockJS protocol test server on 8081
  sockway cat ws://127.0.0.1:8080/echo/websocket  # a WebSocket/SockJS shell

Precedence: flags > environment (SOCKWAY_*) > config file > defaults.
Documentation: docs/ in the source tree, starting with docs/cli.md.
"""


def _parse_endpoint(text: str) -> dict:
    prefix, sep, mode = text.partition("=")
    if not sep or not prefix or not mode:
        raise argparse.ArgumentTypeError(
            f"--endpoint takes PREFIX=MODE, like /chat=broadcast (got {text!r})"
        )
    return {"prefix": prefix, "mode": mode}


def _server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080)")
    parser.add_argument("--cert", help="TLS certificate chain (PEM); serves https:// and wss://")
    parser.add_argument("--key", help="TLS private key (PEM)")
    parser.add_argument("--allowed-origin", action="append", dest="allowed_origins",
                        metavar="ORIGIN",
                        help="allow browser pages from ORIGIN (repeatable; '*' for any; "
                             "default: same origin only)")
    parser.add_argument("--trusted-proxy", action="append", dest="trusted_proxies",
                        metavar="CIDR", help="believe X-Forwarded-* from this address/network")
    parser.add_argument("--max-connections", type=int, help="connections on this process")
    parser.add_argument("--sockjs-url", help="script URL for the SockJS iframe page")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["text", "json"], help="log lines as text or JSON objects")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockway",
        description="A real-time gateway: SockJS and WebSocket for browsers, "
                    "message queues and HTTP for applications.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sockway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway",
                           description="Run the gateway. Without --config or --endpoint it "
                                       "serves /echo (echo) and /chat (broadcast, 15 "
                                       "messages of history).",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", "-c", help="TOML configuration file (or SOCKWAY_CONFIG)")
    serve.add_argument("--endpoint", action="append", type=_parse_endpoint, default=[],
                       metavar="PREFIX=MODE",
                       help="declare an endpoint (repeatable; replaces the file's endpoints); "
                            "modes: echo, broadcast, channels, app")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run N processes sharing the port (SO_REUSEPORT) and their channels "
                            "through the configured broker (needs [broker] url = redis:// or nats://)")
    serve.add_argument("--worker-ports", type=int, metavar="BASE",
                       help="with --workers N: worker i also listens on BASE+i alone, for its "
                            "own /metrics, health, dashboard and trace")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    _server_flags(serve)

    for tool in _tools().values():
        tool.add_parser(sub)

    test = sub.add_parser("testserver", help="run the SockJS protocol test server",
                          description="The standard SockJS protocol test server: /echo, "
                                      "/disabled_websocket_echo, /cookie_needed_echo, /close, "
                                      "/ticker, /amplify, /broadcast.")
    test.add_argument("--host", default="127.0.0.1")
    test.add_argument("--port", type=int, default=8081)
    test.add_argument("--sockjs-url", default=None)
    test.add_argument("--log-level", default="info",
                      choices=["debug", "info", "warning", "error"])
    return parser


def _tools() -> dict:
    """The debugging tools, each a module with add_parser(sub) and run(args)."""
    from sockway.tools import cat, publish, tail, trace

    return {"cat": cat, "publish": publish, "tail": tail, "trace": trace}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {"time": round(record.created, 6), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _cmd_serve(args: argparse.Namespace) -> int:
    from sockway.gateway import run

    overrides = {
        "host": args.host,
        "port": args.port,
        "cert": args.cert,
        "key": args.key,
        "allowed_origins": args.allowed_origins,
        "trusted_proxies": args.trusted_proxies,
        "max_connections": args.max_connections,
        "sockjs_url": args.sockjs_url,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "worker_ports": args.worker_ports,
    }
    config = load_config(args.config, overrides=overrides, extra_endpoints=args.endpoint)
    if not config.endpoints:
        from sockway.config import EndpointConfig

        config.endpoints = [
            EndpointConfig("/echo", "echo"),
            EndpointConfig("/chat", "broadcast", history=15),
        ]
    from sockway.hub.modes import MODES, load_builtin_modes

    load_builtin_modes()
    for endpoint in config.endpoints:
        if endpoint.mode not in MODES:
            raise ConfigError(
                f"endpoint {endpoint.prefix}: unknown mode {endpoint.mode!r}; "
                f"known modes: {', '.join(sorted(MODES))}"
            )
    _setup_logging(config.log_level, config.log_format)
    if args.workers != 1:
        _check_workers(config, args.workers)
        return _run_workers(args.workers, args.raw_argv)
    own_port = None
    index = os.environ.get(WORKER_INDEX)
    if args.reuse_port and index is not None and config.worker_ports:
        own_port = config.worker_ports + int(index)
    run(config, reuse_port=args.reuse_port, own_port=own_port)
    return 0


def _check_workers(config, workers: int) -> None:
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    url = config.broker.url or "memory://"
    if url.startswith("memory:"):
        raise ConfigError(
            f"--workers {workers} needs a shared broker: with the memory broker each process "
            "would have its own channels, history and presence. Set [broker] url = "
            "\"redis://127.0.0.1:6379/0\" or \"nats://127.0.0.1:4222\" (docs/brokers.md)")
    if config.port == 0:
        raise ConfigError("--workers needs a fixed --port (every worker listens on it)")
    if config.zeromq.sub or config.zeromq.pull or config.zeromq.push:
        raise ConfigError("--workers: [zeromq] sockets are bound by one process only; use the "
                          "broker's command input and event stream instead (docs/brokers.md)")
    base = config.worker_ports
    if base and not (base > 0 and base + workers - 1 <= 65535):
        raise ConfigError(f"worker_ports {base}: ports {base} to {base + workers - 1} are not all valid")
    if base and base <= config.port < base + workers:
        raise ConfigError(f"worker_ports {base}: ports {base} to {base + workers - 1} include the "
                          f"shared port {config.port}")


def _run_workers(workers: int, raw_argv: list[str]) -> int:
    """Start ``workers`` fresh ``sockway serve`` processes (each its own node id) with
    SO_REUSEPORT, pass SIGTERM/SIGINT on to them, restart one that dies after running a
    while (one that dies within 5 s of its start stops them all: exit 1), and return
    when all have stopped."""
    import signal
    import subprocess
    import time

    argv = [a for a in raw_argv if a != "--reuse-port"]
    if "--workers" in argv:
        i = argv.index("--workers")
        del argv[i:i + 2]
    argv = [a for a in argv if not a.startswith("--workers=")]
    command = [sys.executable, "-m", "sockway", *argv, "--reuse-port"]
    log = logging.getLogger("sockway")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def die_with_parent() -> None:
        """Linux: a worker gets SIGTERM if the parent dies (even by SIGKILL)."""
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:
            pass

    def spawn(index: int) -> subprocess.Popen:
        env = {**os.environ, WORKER_INDEX: str(index)}  # which of worker_ports is its own
        return subprocess.Popen(command, preexec_fn=die_with_parent, env=env)  # the parent runs no threads

    procs = [spawn(i) for i in range(workers)]
    started = [time.monotonic()] * workers
    failed = False
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("started %d workers: %s", workers, ", ".join(str(p.pid) for p in procs))
    while True:
        if all(p.poll() is not None for p in procs):
            return 1 if failed or not stopping else 0
        for i, proc in enumerate(procs):
            if proc.poll() is None or stopping:
                continue
            if time.monotonic() - started[i] < 5:
                log.error("worker %d exited with %s at start; stopping", proc.pid, proc.returncode)
                failed = True
                stop(signal.SIGTERM, None)
                break
            log.warning("worker %d exited with %s; restarting it", proc.pid, proc.returncode)
            procs[i] = spawn(i)
            started[i] = time.monotonic()
        time.sleep(0.2)


def _cmd_testserver(args: argparse.Namespace) -> int:
    from sockway.gateway import run
    from sockway.testserver import testserver_config

    extra = {"sockjs_url": args.sockjs_url} if args.sockjs_url else {}
    config = testserver_config(args.host, args.port, log_level=args.log_level, **extra)
    _setup_logging(config.log_level)
    run(config)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = list(argv) if argv is not None else sys.argv[1:]
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "testserver":
            return _cmd_testserver(args)
        tools = _tools()
        if args.command in tools:
            return tools[args.command].run(args)
    except ConfigError as exc:
        print(f"sockway: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sockway: {exc}", file=sys.stderr)
        if getattr(exc, "errno", None) == 98:
            print("sockway: the port is in use; choose another with --port 9000 (or SOCKWAY_PORT=9000; "
                  "for the demo: make demo PORT=9000)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    parser.print_help()
    return 2
