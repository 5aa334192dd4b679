"""Broker URLs: which engine a ``[broker] url`` names, and the engine options in its
query string (docs/brokers.md, "Options"), checked before anything connects.

A mistyped option or value is a configuration error at start-up (``sockway serve``
exits 2 with the reason) rather than a node that starts, fails to connect and retries
forever, or one that silently ignores the option. This module imports no client
library at import time, so the configuration can check a URL cheaply.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["ENGINE_OPTIONS", "check_broker_url", "engine_of", "events_on", "jetstream_name", "nats_servers",
           "split_options"]

ENGINE_OPTIONS: dict[str, str] = {
    "prefix": "sockway",
    "presence_ttl": "30",
    "meta_ttl": "604800",
    "events": "",
    "events_maxlen": "100000",
    "commands": "on",
    "sessions": "on",
    "session_ttl": "30",
    "connect_timeout": "2",
    "timeout": "5",
    "batch": "500",
    "replicas": "1",
}
"""Every engine option and its default (``batch`` and ``replicas`` are read by NATS only)."""

SECONDS = ("presence_ttl", "meta_ttl", "session_ttl", "connect_timeout", "timeout")
COUNTS = ("events_maxlen", "batch", "replicas")
SWITCHES = ("commands", "sessions")
TRUE = ("1", "on", "true", "yes")
FALSE = ("0", "off", "false", "no")

NATS_PREFIX = ("", " (NATS: no '*' or '>', no empty subject token)")

SCHEMES = {"memory": "memory", "redis": "redis", "rediss": "redis", "unix": "redis",
           "nats": "nats", "tls": "nats"}


def engine_of(url: str | None) -> str:
    """``"memory"``, ``"redis"`` or ``"nats"``; a ValueError for any other scheme."""
    if not url:
        return "memory"
    scheme = urlsplit(url).scheme.lower()
    engine = SCHEMES.get(scheme)
    if engine is None:
        raise ValueError(f"unknown broker {url!r}: use memory://, redis://host:port/db "
                         "(rediss://, unix://) or nats://host:port")
    return engine


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """The URL without the engine options, and every engine option (defaults filled in).
    Other query parameters stay in the URL, for the client library. (The query is split
    off by hand: a NATS URL may list several servers, which is not one URL's syntax.)"""
    base, _sep, query = url.partition("?")
    options = dict(ENGINE_OPTIONS)
    rest = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ENGINE_OPTIONS:
            options[key] = value
        else:
            rest.append((key, value))
    return (f"{base}?{urlencode(rest)}" if rest else base), options


def events_on(options: dict[str, str]) -> bool:
    """Whether the engine writes application events to its stream (``events`` set, and
    not to a value meaning off)."""
    events = options["events"]
    return bool(events) and events.lower() not in FALSE


def nats_servers(url: str) -> list[str]:
    """The servers a NATS URL names, without the query: ``nats://a:4222`` or the seed
    list of a NATS cluster, ``nats://a:4222,nats://b:4222`` (also ``nats://a:4222,b:4222``:
    a server without a scheme takes the first one's). The client connects to one of them,
    learns the rest of the cluster from it, and moves to another when its server goes."""
    base = url.partition("?")[0]
    scheme = base.partition("://")[0] or "nats"
    servers = []
    for item in base.split(","):
        item = item.strip()
        servers.append(item if "://" in item else f"{scheme}://{item}")
    return servers


def jetstream_name(prefix: str) -> str:
    """The start of the names of the JetStream streams and KV buckets a NATS engine with
    ``prefix`` makes (``<PREFIX>_EVENTS``, ``<PREFIX>_PRESENCE``, ...): upper case, and
    only the characters such names may hold ("app.rt" gives "APP_RT")."""
    return re.sub(r"[^A-Za-z0-9]", "_", prefix).upper()


def check_broker_url(url: str | None) -> None:
    """Raise a ValueError saying what to change if ``url`` names no engine, has an
    option the engine (or, for Redis, redis-py) does not know, or a value out of range."""
    engine = engine_of(url)
    if engine == "memory" or url is None:
        return
    bare, options = split_options(url)
    for name in SECONDS:
        value = options[name]
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise ValueError(f"option {name} must be a positive number of seconds, not {value!r}")
    for name in COUNTS:
        value = options[name]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"option {name} must be a whole number of at least 1, not {value!r}")
    for name in SWITCHES:
        if options[name].lower() not in TRUE + FALSE:
            raise ValueError(f"option {name} must be on or off, not {options[name]!r}")
    prefix = options["prefix"]
    if not prefix or re.search(r"\s", prefix) or (engine == "nats" and re.search(r"[*>]|^\.|\.$|\.\.", prefix)):
        raise ValueError(f"option prefix must be a word without spaces{NATS_PREFIX[engine == 'nats']}, "
                         f"not {prefix!r}")
    if engine == "nats" and options["events"].lower() not in ("", *TRUE, *FALSE):
        raise ValueError("option events takes on or off with NATS (the stream is <PREFIX>_EVENTS), "
                         f"not {options['events']!r}")
    if engine == "nats":
        for server in nats_servers(bare):
            parts = urlsplit(server)
            try:
                port = parts.port
            except ValueError:
                port = -1
            if parts.scheme not in ("nats", "tls") or not parts.hostname or port == -1:
                raise ValueError(f"{server!r} is not a NATS server address: write nats://host:port, or several "
                                 "separated by commas (nats://a:4222,nats://b:4222)")
        if int(options["replicas"]) > 5:
            raise ValueError(f"option replicas must be 1 to 5 (JetStream's limit), not {options['replicas']}")
    elif options["replicas"] != "1":
        raise ValueError("option replicas is for NATS (JetStream replicas); Redis replicates by its own configuration")
    others = [key for key, _value in parse_qsl(bare.partition("?")[2], keep_blank_values=True)]
    unknown = [key for key in others if key not in _client_options(engine)]
    if unknown:
        known = ", ".join(ENGINE_OPTIONS)
        library = " or one of redis-py's connection options" if engine == "redis" else ""
        raise ValueError(f"option {unknown[0]!r} is unknown: use one of {known}{library} "
                         "(docs/brokers.md)")


def _client_options(engine: str) -> frozenset[str]:
    """Query parameters the client library takes from the URL: redis-py turns each into
    a keyword argument of its connection (an unknown one fails every connection attempt
    with a TypeError); nats-py reads none."""
    if engine != "redis":
        return frozenset()
    import inspect

    from redis.asyncio import connection

    names = {"max_connections"}
    for cls in (connection.AbstractConnection, connection.Connection, connection.SSLConnection,
                connection.UnixDomainSocketConnection):
        names.update(inspect.signature(cls.__init__).parameters)
    return frozenset(names - {"self", "args", "kwargs"})
