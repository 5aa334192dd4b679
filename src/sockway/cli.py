"""The ``sockway`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from sockway import __version__
from sockway.config import ConfigError, load_config

__all__ = ["main"]

EPILOG = """\
examples:
  sockway serve                                   # /echo and /chat on 127.0.0.1:8080
  sockway serve --config sockway.toml
  sockway serve --port 9000 --endpoint /chat=broadcast --endpoint /echo=echo
  SOCKWAY_PORT=9000 sockway serve                 # environment overrides the file
  sockway testserver                              # the SockJS protocol test server on 8081

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
    _server_flags(serve)

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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _cmd_serve(args: argparse.Namespace) -> int:
    from sockway.edge.server import run

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
    _setup_logging(config.log_level)
    run(config)
    return 0


def _cmd_testserver(args: argparse.Namespace) -> int:
    from sockway.edge.server import run
    from sockway.testserver import testserver_config

    extra = {"sockjs_url": args.sockjs_url} if args.sockjs_url else {}
    config = testserver_config(args.host, args.port, log_level=args.log_level, **extra)
    _setup_logging(config.log_level)
    run(config)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "testserver":
            return _cmd_testserver(args)
    except ConfigError as exc:
        print(f"sockway: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sockway: {exc}", file=sys.stderr)
        if getattr(exc, "errno", None) == 98:
            print("sockway: the port is in use; choose another with --port", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    parser.print_help()
    return 2
