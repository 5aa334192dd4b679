"""Configuration: defaults < TOML file < environment variables < command-line flags.

The TOML file (stdlib ``tomllib``) has a ``[server]`` table, an optional
``[endpoint_defaults]`` table and one ``[[endpoint]]`` table per endpoint::

    [server]
    host = "127.0.0.1"
    port = 8080

    [[endpoint]]
    prefix = "/chat"
    mode = "broadcast"
    history = 15

Environment variables override ``[server]`` keys: ``SOCKWAY_<KEY>`` (upper case), for
example ``SOCKWAY_PORT=9000`` or ``SOCKWAY_ALLOWED_ORIGINS=https://a.example,https://b.example``
(lists are comma-separated). Flags override both. docs/configuration.md lists every key
with its default and the memory it costs.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

__all__ = ["ConfigError", "EndpointConfig", "ServerConfig", "load_config"]


class ConfigError(ValueError):
    """A configuration problem, with a message that says what to change."""


def _at_least(section: object, where: str, minimum: float, *names: str) -> None:
    """Every named number of ``section`` is ``minimum`` or more, or a ConfigError says which."""
    for name in names:
        value = getattr(section, name)
        if value < minimum:
            need = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise ConfigError(f"{where}: {name} {need} (got {value})")


@dataclass
class EndpointConfig:
    prefix: str
    """URL prefix, like "/chat": SockJS under it, raw WebSocket at <prefix>/websocket."""
    mode: str = "echo"
    """echo | broadcast | channels | app (see docs/endpoints.md)."""
    history: int = 0
    """broadcast: messages replayed to each new client (the chat demo uses 15)."""
    sockjs: bool = True
    """Serve the SockJS transports under the prefix."""
    websocket: bool = True
    """Offer WebSocket (SockJS websocket transport and raw /websocket)."""
    cookie_needed: bool = False
    """Set the JSESSIONID cookie on session requests, for sticky load balancers."""
    permessage_deflate: bool = True
    """Negotiate permessage-deflate (RFC 7692) when a client offers it."""
    deflate_window_bits: int = 15
    """Largest server window (9-15). 15 costs about 256 KiB per compression, briefly."""
    compress_threshold: int = 128
    """Messages shorter than this many bytes are sent uncompressed."""
    max_message_size: int = 1 << 20
    """Largest incoming message (bytes, after decompression). WebSocket: close 1009;
    SockJS HTTP: 413."""
    subprotocols: list[str] = field(default_factory=list)
    """Raw WebSocket subprotocols offered, in order of preference."""
    heartbeat_delay: float = 25.0
    """SockJS heartbeat and WebSocket ping interval (seconds)."""
    ping_timeout: float = 20.0
    """Raw WebSocket: close 1011 when a ping gets no pong within this many seconds."""
    disconnect_delay: float = 5.0
    """SockJS: a session with no receiving request for this long is closed."""
    response_limit: int = 128 * 1024
    """SockJS streaming: bytes sent before a streaming response is ended."""
    max_buffer: int = 1 << 20
    """Per connection: a client for which more than this many bytes already wait (queued
    or unsent in the transport) when a new message comes is closed with 4008. Memory per
    client is at most max_buffer + one message + the kernel's socket buffer."""
    max_session_queue: int = 1 << 20
    """SockJS HTTP sessions: bytes waiting in a session's queue (each message's JSON
    string plus one) for its receiving request: while none is attached, or between
    two writes of the attached one. A message that would go over it closes the
    session with 4009 (the messages queued before it are still delivered first)."""
    close_timeout: float = 5.0
    """Seconds a client gets to finish the WebSocket closing handshake."""
    max_connections: int = 0
    """Connections on this endpoint (0: only the server limit applies)."""
    allowed_origins: list[str] | None = None
    """Overrides the server's allow-list for this endpoint."""
    jsonp_without_referer: bool = False
    """Serve jsonp polling requests that carry neither an Origin nor a Referer although
    an allow-list is in force (anything but ``"*"``). Off by default: a ``<script>``
    load sends no Origin, so without the Referer the page it serves cannot be known,
    and any web page could read this endpoint through a visitor's browser. Turn it on
    only for public data, when allowed pages suppress the Referer (``Referrer-Policy:
    no-referrer``) and need jsonp."""
    keep_request_info: bool = False
    """Keep headers and query of the opening request (about 1 KiB per connection)."""
    anonymous: bool = True
    """Whether clients without a token may connect. False: a valid JWT is required
    (``?token=`` or, in channels mode, a first ``auth`` message), or in app mode the
    application must accept the ``open`` event."""
    auth_timeout: float = 10.0
    """Seconds a client has to authenticate: channels mode with ``anonymous = false``
    closes a client that sent no ``auth`` command by then with 4002; app mode with
    ``app_accept`` one the application did not accept with 4001."""
    rate_limit: float = 0.0
    """Incoming messages per second per connection (0: no limit); above the limit and
    its burst the client is closed with 4029."""
    rate_burst: int = 0
    """Messages allowed in a burst (default: twice rate_limit)."""
    app_accept: bool = False
    """App mode: hold each new connection until the application accepts it."""
    channel: str | None = None
    """broadcast mode: the channel behind the endpoint (default: the prefix)."""

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or (self.prefix.endswith("/") and self.prefix != "/"):
            raise ConfigError(
                f"endpoint prefix {self.prefix!r} must start with '/' and not end with '/'"
                " (for example \"/chat\")"
            )
        if self.prefix == "/":
            raise ConfigError("endpoint prefix '/' is reserved for the index page")
        if not 9 <= self.deflate_window_bits <= 15:
            raise ConfigError("deflate_window_bits must be between 9 and 15")
        where = f"endpoint {self.prefix}"
        _check_origins(self.allowed_origins, where)
        _at_least(self, where, 0, "history", "max_connections", "compress_threshold", "rate_limit", "rate_burst")
        _at_least(self, where, 1, "max_message_size", "response_limit", "max_buffer", "max_session_queue")
        for name in ("heartbeat_delay", "disconnect_delay", "close_timeout", "ping_timeout",
                     "auth_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"endpoint {self.prefix}: {name} must be positive")


PERMISSIONS = ("open", "token", "app", "none")


@dataclass
class NamespaceConfig:
    """Rules for channels named ``<name>:<rest>`` (``name = ""``: channels with no
    namespace)."""

    name: str = ""
    subscribe: str = "open"
    """Who may subscribe from a client: open | token (the JWT's ``channels`` claim
    matches) | app (the application decides) | none (only the application subscribes
    connections)."""
    publish: str = "none"
    """Who may publish from a client: open | token (``publish`` claim) | app | none."""
    history_size: int = 0
    """Publications kept for recovery and history queries (0: none)."""
    history_ttl: float = 0.0
    """Seconds a publication stays in history (0: until pushed out by history_size)."""
    history_max_bytes: int = 4 << 20
    """Bytes of history kept per channel: each publication counts its data's JSON (or
    binary) bytes plus 500 for its bookkeeping; the oldest go first, and a publication
    larger than the bound is delivered but not kept. Memory engine: what a channel's
    history costs in the gateway at most; Redis: the same bound, in Redis; NATS: the
    bound of what history queries and recovery return (the stream keeps history_size + 1
    messages, each at most the server's max_payload)."""
    presence: bool = False
    """Track who is subscribed (connection id, user id, info)."""
    join_leave: bool = False
    """Send join/leave events to subscribers (needs presence)."""
    client_presence: bool = True
    """Subscribers may query presence (needs presence)."""
    client_history: bool = True
    """Subscribers may query history."""
    max_data_size: int = 65536
    """Largest published ``data`` (bytes of JSON)."""

    def __post_init__(self) -> None:
        for name in ("subscribe", "publish"):
            if getattr(self, name) not in PERMISSIONS:
                raise ConfigError(
                    f"namespace {self.name!r}: {name} must be one of {', '.join(PERMISSIONS)}"
                )
        if ":" in self.name:
            raise ConfigError(f"namespace name {self.name!r} must not contain ':'")
        if self.join_leave and not self.presence:
            raise ConfigError(f"namespace {self.name!r}: join_leave needs presence = true")
        _at_least(self, f"namespace {self.name!r}", 0, "history_size", "history_ttl")
        _at_least(self, f"namespace {self.name!r}", 1, "max_data_size", "history_max_bytes")


@dataclass
class ApiConfig:
    key: str | None = None
    """The HTTP API (/api/...) is enabled when a key is set; clients send it as
    ``Authorization: Bearer <key>`` or ``X-API-Key``."""


@dataclass
class AuthConfig:
    jwt_secret: str | None = None
    """HS256 secret for connection tokens."""
    jwt_public_key: str | None = None
    """RS256 public key (PEM file) for connection tokens."""
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    leeway: float = 5.0
    """Seconds of clock skew tolerated on exp/nbf."""

    def __post_init__(self) -> None:
        _at_least(self, "[auth]", 0, "leeway")


@dataclass
class ZmqConfig:
    sub: str | None = None
    """Data in: a bound SUB socket that programs PUB-connect to (the talk's pattern),
    e.g. "tcp://127.0.0.1:5555". A one-frame message goes to ``default`` byte for byte,
    whatever it looks like; it never runs a command."""
    pull: str | None = None
    """Commands and data in: a bound PULL socket that programs PUSH-connect to. A
    one-frame JSON command (or array of them) is run; any other message is handled as
    on ``sub``. Unlike PUB, a PUSH socket keeps what it sends before its connection is up."""
    push: str | None = None
    """Events out: a bound PUSH socket that workers PULL from, e.g. "tcp://127.0.0.1:5556"."""
    default: str | None = None
    """Where a one-frame message that is not a command goes, byte for byte:
    "channel:<name>" or "endpoint:<prefix>" (a broadcast endpoint)."""
    hwm: int = 100_000
    """High-water mark of each socket (messages; 0: ZeroMQ's "no limit")."""

    def __post_init__(self) -> None:
        _at_least(self, "[zeromq]", 0, "hwm")


@dataclass
class WebhookConfig:
    url: str | None = None
    """Events are POSTed here in batches; the response may carry commands."""
    secret: str | None = None
    """HMAC-SHA256 key of the X-Sockway-Signature header."""
    timeout: float = 5.0
    """Seconds one POST may take (connecting, sending, and reading the answer) before
    it counts as failed and is retried."""
    batch_size: int = 100
    """Events per request at most."""
    max_retries: int = 8
    """Attempts after the first, with exponential backoff (0.2 s doubling, capped at 10 s);
    then the batch is dropped. -1: retry until the application takes it (nothing is
    dropped; events wait in the bounded queue)."""

    def __post_init__(self) -> None:
        if self.max_retries < -1:
            raise ConfigError(f"[webhook] max_retries must be -1 (retry until delivered) or more "
                              f"(got {self.max_retries})")
        if self.batch_size < 1:
            raise ConfigError(f"[webhook] batch_size must be at least 1 (got {self.batch_size})")
        if not self.timeout > 0:
            raise ConfigError(f"[webhook] timeout must be a positive number of seconds (got {self.timeout})")


@dataclass
class TunnelConfig:
    """A plain TCP line server bridged both ways to a channel (the talk's "tunnel"
    demo): every line a TCP client types is published to ``channel``; every
    publication on ``channel`` is written to every TCP client, one line each."""

    listen: str
    """host:port to listen on, like "127.0.0.1:7070"."""
    channel: str = "tunnel"
    """The channel both sides share."""
    max_line: int = 4096
    """Longest accepted line (bytes); a longer one closes that TCP client with a message."""

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"[[tunnel]] listen must be host:port, like \"127.0.0.1:7070\" (got {self.listen!r})")
        _at_least(self, f"[[tunnel]] {self.listen}", 1, "max_line")


@dataclass
class BrokerConfig:
    url: str = "memory://"
    """memory:// (embedded, one process, the default), redis://host:6379/0 (also rediss://,
    unix://) or nats://host:4222 (with JetStream): see docs/brokers.md."""

    def __post_init__(self) -> None:
        from sockway.brokers.urls import check_broker_url

        try:
            check_broker_url(self.url)
        except ValueError as exc:
            raise ConfigError(f"[broker] url: {exc}") from None


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to listen on ("0.0.0.0" for every interface)."""
    port: int = 8080
    """Port to listen on."""
    cert: str | None = None
    """TLS certificate chain (PEM). With ``key``, the server speaks HTTPS and wss://."""
    key: str | None = None
    """TLS private key (PEM)."""
    allowed_origins: list[str] = field(default_factory=list)
    """Origins allowed to open connections, each ``scheme://host[:port]`` with no path.
    Empty (the default): same origin only, plus clients that send no Origin (non-browser
    clients). ``"*"`` allows any; ``"https://*.example.com"`` any subdomain of
    example.com (whole labels; not example.com itself). This is the protection against
    cross-site WebSocket hijacking; see docs/security.md for jsonp and the iframe
    transports."""
    trusted_proxies: list[str] = field(default_factory=list)
    """Addresses or CIDR networks whose X-Forwarded-For, X-Forwarded-Proto and
    X-Forwarded-Host are believed (client address, origin check: docs/security.md)."""
    max_connections: int = 100_000
    """Open client connections (WebSockets and SockJS sessions) on this process."""
    max_tcp_connections: int = 0
    """TCP connections open at once on this process, counted as they are accepted,
    before any HTTP is read (every socket a client opened: WebSockets, SockJS
    requests, API calls, TCP tunnel clients). At the limit a new connection is closed at once, so that the
    process never runs out of descriptors and established clients keep working. 0: the
    descriptor limit (the soft RLIMIT_NOFILE, which sockway raises to the hard limit
    at start) minus a reserve for brokers, logs and listeners of an eighth of it, at
    least 128. Each connection costs a descriptor, the kernel's socket buffers and,
    until its first request head is complete, about 1 KiB."""
    max_tcp_per_address: int = 0
    """TCP connections open at once from one client address (an IPv6 client: its /64),
    of every kind together, counted and refused like max_tcp_connections. Peers in trusted_proxies are exempt
    (behind a proxy, every client comes from the proxy's address). 0: a sixteenth of
    max_tcp_connections, at least 64."""
    head_timeout: float = 10.0
    """Seconds a new connection has to send its first complete request head, counted
    from its accept: the TLS handshake, a WebSocket's opening handshake and a legacy
    hixie-76 handshake's 8 key bytes included. Then it gets 408 (if it sent anything)
    and is closed."""
    keepalive_timeout: float = 15.0
    """Seconds an HTTP keep-alive connection may stay idle after a response: the next
    request head must be complete within this time, or the connection is closed."""
    body_timeout: float = 30.0
    """Seconds a request body (SockJS xhr_send and jsonp_send, the HTTP API) may take to
    arrive whole; then 408 and the connection is closed."""
    send_timeout: float = 30.0
    """Seconds an HTTP response (a SockJS poll or stream, a file, an API answer) may
    stay stuck behind a client that does not read it (the socket's buffers full);
    then the connection is aborted."""
    shutdown_timeout: float = 5.0
    """Seconds to wait for clients to receive their close on SIGTERM/SIGINT."""
    sockjs_url: str = "/sockjs.min.js"
    """Script URL the SockJS iframe page loads (iframe-based transports). The default,
    the gateway's own copy, becomes sockjs-client's URL on a public CDN when the gateway
    has no copy (see ``sockjs_client``)."""
    sockjs_client: str | None = None
    """File served at /sockjs.min.js. Default: the copy installed with sockway (a wheel
    built where ``node_modules`` was carries it), else
    node_modules/sockjs-client/dist/sockjs.min.js in the working directory or above, else
    none: /sockjs.min.js then redirects to sockjs-client 1.6.1 on a public CDN, as the log
    says at start."""
    static: str | None = None
    """A directory served at / (the demo pages). With it, /sockway/site.json tells its
    pages the TCP tunnels' and ZeroMQ sockets' addresses, to show the ones in use."""
    socket_send_buffer: int = 0
    """SO_SNDBUF of each client socket in bytes (0: the kernel's default, which Linux
    grows up to several MiB for a client that does not read). Set it (e.g. 65536) to
    bound the kernel memory a slow client can hold beyond max_buffer."""
    log_format: str = "text"
    """text | json (one JSON object per line, for log collectors)."""
    sweep_interval: float = 1.0
    """Seconds between checks of timeouts, heartbeats and keepalives."""
    worker_ports: int = 0
    """With ``sockway serve --workers N``: worker i (0 to N-1) also listens on
    ``worker_ports + i`` (on ``host``), alone, so that each worker's /metrics, health,
    dashboard and trace can be reached (the shared port answers from whichever worker
    the kernel picks). 0: off."""
    log_level: str = "info"
    """debug | info | warning | error."""
    access_log: bool = False
    """Log every HTTP request (costly at high request rates)."""
    max_channels: int = 100_000
    """Channels this process holds: channels with subscribers here, and (memory engine)
    channels kept for their history or position. A subscription to a new channel
    beyond it is refused (channels protocol error ``channel_limit``, HTTP API 503);
    existing channels keep working. The memory engine first makes room by dropping the
    history of a channel nobody is subscribed to, the one published to least recently.
    A channel costs about 1.3 KiB with one subscriber (100,000: 130 MiB), 1 KiB kept
    for its history alone, besides the history itself."""
    node_history_max_bytes: int = 256 << 20
    """Memory engine: bytes of history of all channels together, counted as for
    ``history_max_bytes``. Past it, the oldest publications of the channels published
    to least recently are dropped (a client recovering past them gets ``recovered:
    false``). Redis and NATS keep history in the broker, not in this process."""
    event_queue_size: int = 100_000
    """Application events waiting for a slow or absent application, per output. When
    full, message events are dropped (counted and logged); open and close events are
    always kept."""
    endpoints: list[EndpointConfig] = field(default_factory=list)
    namespaces: list[NamespaceConfig] = field(default_factory=list)
    tunnels: list[TunnelConfig] = field(default_factory=list)
    api: ApiConfig = field(default_factory=ApiConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    zeromq: ZmqConfig = field(default_factory=ZmqConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)

    def namespace(self, channel: str) -> NamespaceConfig:
        """The rules of a channel: its namespace's, or the default namespace's."""
        name = channel.partition(":")[0] if ":" in channel else ""
        for ns in self.namespaces:
            if ns.name == name:
                return ns
        for ns in self.namespaces:
            if ns.name == "":
                return ns
        return _DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not between 0 and 65535")
        if bool(self.cert) != bool(self.key):
            raise ConfigError("TLS needs both cert and key")
        prefixes = [e.prefix for e in self.endpoints]
        dupes = {p for p in prefixes if prefixes.count(p) > 1}
        if dupes:
            raise ConfigError(f"endpoint prefix declared twice: {', '.join(sorted(dupes))}")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format must be text or json")
        _check_origins(self.allowed_origins, "[server]")
        _at_least(self, "[server]", 0, "socket_send_buffer", "shutdown_timeout", "worker_ports")
        _at_least(self, "[server]", 1, "max_connections", "event_queue_size", "max_channels",
                  "node_history_max_bytes")
        _at_least(self, "[server]", 0, "max_tcp_connections", "max_tcp_per_address")
        for name in ("head_timeout", "keepalive_timeout", "body_timeout", "send_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[server]: {name} must be a positive number of seconds "
                                  f"(got {getattr(self, name)})")
        if not self.sweep_interval > 0:
            raise ConfigError(f"[server]: sweep_interval must be a positive number of seconds "
                              f"(got {self.sweep_interval})")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be one of debug, info, warning, error")


def _check_origins(origins: list[str] | None, where: str) -> None:
    from sockway.edge.security import parse_allowed_origin

    for entry in origins or ():
        if entry != "*":
            try:
                parse_allowed_origin(entry)
            except ValueError as exc:
                raise ConfigError(f"{where}: allowed_origins: {exc}") from None


SECTIONS = {"api": ApiConfig, "auth": AuthConfig, "zeromq": ZmqConfig, "webhook": WebhookConfig,
            "broker": BrokerConfig}
_DEFAULT_NAMESPACE = NamespaceConfig()


def _coerce(name: str, value: Any, typ: Any, where: str) -> Any:
    """Check or convert a value read from TOML, the environment or a flag."""
    text = str(typ)
    if value is None:
        return None
    if "list" in text:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {name} must be a list of strings")
        return value
    if typ is bool or text == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: {name} must be true or false, not {value!r}")
    if typ is int or text == "int":
        try:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} must be an integer, not {value!r}") from None
    if typ is float or text == "float":
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} must be a number, not {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string, not {value!r}")
    return value


def _build(cls: type, data: dict, where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - {"namespaces", "tunnels", *SECTIONS}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known keys: {', '.join(sorted(known - {'endpoints'}))}"
        )
    values = {k: _coerce(k, v, hints[k], where) for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def endpoint_from_dict(data: dict, defaults: dict | None = None, where: str = "endpoint") -> EndpointConfig:
    merged = dict(defaults or {})
    merged.update(data)
    if "prefix" not in merged:
        raise ConfigError(f"{where}: every [[endpoint]] needs a prefix, like prefix = \"/chat\"")
    return _build(EndpointConfig, merged, f"{where} {merged['prefix']}")


def load_config(
    path: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    extra_endpoints: list[dict] | None = None,
) -> ServerConfig:
    """Build the configuration. ``overrides`` are flag values (None means not given);
    ``extra_endpoints`` come from ``--endpoint`` flags and replace those of the file
    when given."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is None and env.get("SOCKWAY_CONFIG"):
        path = env["SOCKWAY_CONFIG"]
    file_endpoints: list[dict] = []
    defaults: dict = {}
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    namespace_dicts: list[dict] = []
    tunnel_dicts: list[dict] = []
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p}: {exc}") from None
        base_dir = p.resolve().parent
        unknown = set(raw) - {"server", "endpoint", "endpoint_defaults", "namespace", "tunnel", *SECTIONS}
        if unknown:
            raise ConfigError(
                f"config file {p}: unknown table(s) {', '.join(sorted(unknown))}; expected "
                "[server], [endpoint_defaults], [[endpoint]], [[namespace]], [[tunnel]], "
                + ", ".join(f"[{name}]" for name in SECTIONS)
            )
        sections = {name: dict(raw.get(name, {})) for name in SECTIONS}
        namespace_dicts = raw.get("namespace", [])
        tunnel_dicts = raw.get("tunnel", [])
        data.update(raw.get("server", {}))
        defaults = raw.get("endpoint_defaults", {})
        file_endpoints = raw.get("endpoint", [])
        if not isinstance(file_endpoints, list):
            raise ConfigError(f"config file {p}: use [[endpoint]] (an array of tables)")
        # Paths in the file are relative to the file.
        for key in ("cert", "key", "static", "sockjs_client"):
            if isinstance(data.get(key), str) and not os.path.isabs(data[key]):
                data[key] = str(base_dir / data[key])
    server_fields = {f.name for f in dataclasses.fields(ServerConfig)} - {
        "endpoints", "namespaces", "tunnels", *SECTIONS}
    for key in server_fields:
        name = f"SOCKWAY_{key.upper()}"
        if name in env:
            data[key] = env[name]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"SOCKWAY_{section.upper()}_{f.name.upper()}"
            if name in env:
                sections[section][f.name] = env[name]
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, dot, sub = key.partition(".")
        if dot:
            sections[section][sub] = value
        else:
            data[key] = value
    endpoint_dicts = extra_endpoints if extra_endpoints else file_endpoints
    endpoints = [
        endpoint_from_dict(e, defaults, where=f"[[endpoint]] #{i + 1}")
        for i, e in enumerate(endpoint_dicts)
    ]
    config = _build(ServerConfig, data, "[server]")
    config.endpoints = endpoints
    for name, cls in SECTIONS.items():
        setattr(config, name, _build(cls, sections[name], f"[{name}]"))
    if not isinstance(namespace_dicts, list):
        raise ConfigError("use [[namespace]] (an array of tables)")
    config.namespaces = [_build(NamespaceConfig, n, f"[[namespace]] {n.get('name', '')!r}")
                         for n in namespace_dicts]
    if not isinstance(tunnel_dicts, list):
        raise ConfigError("use [[tunnel]] (an array of tables)")
    config.tunnels = [_build(TunnelConfig, t, "[[tunnel]]") for t in tunnel_dicts]
    names = [n.name for n in config.namespaces]
    if len(names) != len(set(names)):
        raise ConfigError("a [[namespace]] name is declared twice")
    config.__post_init__()
    return config
