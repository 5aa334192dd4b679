"""The debugging tools of the command line: ``cat`` (a WebSocket/SockJS shell),
``publish`` and ``tail`` (the bridge from the command line), ``trace`` (live frames)."""

import os
import sys

__all__ = ["broker_target", "reader_gone"]


def reader_gone() -> int:
    """What a tool returns when the program reading its output went away (``sockway
    tail ... | head -3``): nothing more to say, status 0, and no second error when the
    interpreter flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


def broker_target(args) -> tuple[str, str, str]:
    """For ``--redis URL`` or ``--nats URL`` (a cluster's ``[broker] url`` as configured):
    the engine ("redis" or "nats"), the URL as given, and its ``prefix`` (default
    "sockway"). A ValueError says what is wrong with the URL."""
    from urllib.parse import parse_qs, urlsplit

    engine, url = ("nats", args.nats) if args.nats else ("redis", args.redis)
    schemes = ("nats", "tls") if engine == "nats" else ("redis", "rediss", "unix")
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"--{engine} takes a {schemes[0]}:// URL, got {url!r}")
    return engine, url, parse_qs(parts.query).get("prefix", ["sockway"])[0]
