"""The composition root: builds one gateway process from its configuration (the broker,
the hub and its endpoints, the edge's HTTP/WebSocket server, the bridges) and runs it
(TLS, signals, graceful shutdown). Nothing else in the package builds these parts, and
nothing imports this module but the command line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from sockway.bridge.http_api import add_api_routes
from sockway.brokers import create_broker
from sockway.client_bundles import BUNDLES, SOCKJS, Located
from sockway.config import ServerConfig
from sockway.edge.admin import add_admin_routes
from sockway.edge.admission import Door, descriptor_limit, raise_descriptor_limit, tcp_limits
from sockway.edge.http_protocol import HttpConnection
from sockway.edge.routes import EndpointRoutes
from sockway.edge.security import ProxyPolicy
from sockway.edge.sniffer import FirstRequestSniffer
from sockway.edge.tls import TlsListener
from sockway.hub.endpoint import Endpoint
from sockway.hub.hub import Hub
from sockway.hub.modes import create_mode
from sockway.metrics import Metrics

__all__ = ["Gateway", "run"]

log = logging.getLogger("sockway")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STEP_TIMEOUT = 3.0
"""Seconds each shutdown step after closing the clients may take."""


class Gateway:
    """One gateway process: hub, endpoints and the aiohttp server."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.broker = create_broker(config.broker.url)
        self.hub = Hub(self.loop, config, self.broker)
        self.proxies = ProxyPolicy(config.trusted_proxies)
        max_tcp, max_tcp_per_address = tcp_limits(config)
        self.door = Door(self.loop, max_tcp, max_tcp_per_address, self.proxies,
                         config.head_timeout, config.send_timeout)
        """Every TCP connection is counted here from its accept (sockway.edge.admission)."""
        self.hub.add_sweeper(self.door.sweep)
        self.app = web.Application(client_max_size=max(
            [e.max_message_size * 2 + 1024 for e in config.endpoints] + [1 << 20]))
        self.runner: web.AppRunner | None = None
        self.servers: list[asyncio.Server] = []
        self.routes: dict[str, EndpointRoutes] = {}
        self._stopping = asyncio.Event()
        self.bundles = self._locate_bundles()  # before the endpoints: their iframe page loads SockJS
        for endpoint_config in config.endpoints:
            mode = create_mode(endpoint_config.mode, endpoint_config)
            endpoint = Endpoint(endpoint_config, mode, self.hub)
            self.hub.add_endpoint(endpoint)
            routes = EndpointRoutes(endpoint, sockjs_url=self.sockjs_url,
                                    allowed_origins=config.allowed_origins, proxies=self.proxies)
            self.routes[endpoint_config.prefix] = routes
            self.app.router.add_route("*", endpoint_config.prefix + "{tail:(/.*)?}", routes)
        self.metrics = Metrics(self.hub, self._tcp_metrics)
        self.hub.commands.observe = self.metrics.command_latency.observe
        self.admin = add_admin_routes(self.app, self.hub, config.api.key, self.metrics.registry)
        self.bridges: list = []
        if config.api.key:
            add_api_routes(self.app, self.hub, config.api.key)
        if config.zeromq.sub or config.zeromq.pull or config.zeromq.push:
            from sockway.bridge.zeromq import ZmqBridge

            self.bridges.append(ZmqBridge(self.hub, config.zeromq))
        if config.webhook.url:
            from sockway.bridge.webhooks import WebhookSender

            self.bridges.append(WebhookSender(self.hub, config.webhook))
        # Event outputs and command inputs of the broker engine itself (Redis streams, NATS).
        self.bridges.extend(self.broker.app_bridges(self.hub))
        if config.tunnels:
            from sockway.bridge.tunnel import TcpTunnel

            self.bridges.extend(TcpTunnel(self.hub, tunnel, self.door, config.socket_send_buffer)
                                for tunnel in config.tunnels)
        # Last: a static directory at "/" would otherwise shadow every route after it.
        self._add_static_routes()

    def _locate_bundles(self) -> dict[str, Located]:
        """Where each client bundle comes from (sockway.client_bundles): a local copy, or
        the CDN, said once in the log."""
        bundles = {}
        for bundle in BUNDLES:
            located = bundle.locate(getattr(self.config, bundle.setting))
            if located.path is None:
                log.warning(located.fallback_message())
            bundles[bundle.route] = located
        return bundles

    @property
    def sockjs_url(self) -> str:
        """What the iframe page loads: ``sockjs_url`` as configured, except that the
        default (the gateway's own /sockjs.min.js) becomes the CDN when there is no copy."""
        if self.config.sockjs_url == SOCKJS.route:
            return self.bundles[SOCKJS.route].url
        return self.config.sockjs_url

    def _add_static_routes(self) -> None:
        for located in self.bundles.values():
            self.app.router.add_get(located.bundle.route, self._bundle_handler(located))
        helper = STATIC_DIR / "sockway.js"

        async def browser_helper(request: web.Request) -> web.FileResponse:
            response = web.FileResponse(helper)
            response.headers["Cache-Control"] = "public, max-age=300"
            response.headers["Access-Control-Allow-Origin"] = "*"
            return response

        self.app.router.add_get("/sockway.js", browser_helper)
        self.app.router.add_get("/sockway/health", self._health)
        self.app.router.add_get("/readyz", self._readyz)
        static = Path(self.config.static) if self.config.static else None
        if static is not None:
            if not static.is_dir():
                raise FileNotFoundError(f"static directory {static} not found")
            self.app.router.add_get("/sockway/site.json", self._site_addresses)
            self.app.router.add_get("/", lambda r: web.FileResponse(static / "index.html"))
            self.app.router.add_static("/", static, show_index=False)

    @staticmethod
    def _bundle_handler(located: Located):
        """The bundle's file, or a redirect to its version on the CDN when there is none."""
        if located.path is None:
            async def redirect(request: web.Request) -> web.Response:
                raise web.HTTPFound(located.bundle.cdn_url)

            return redirect
        path = located.path

        async def serve(request: web.Request) -> web.FileResponse:
            response = web.FileResponse(path)
            response.headers["Cache-Control"] = "public, max-age=3600"
            response.headers["Access-Control-Allow-Origin"] = "*"
            return response

        return serve

    async def _site_addresses(self, request: web.Request) -> web.Response:
        """With a ``static`` site only: the addresses its pages tell users to type besides
        the page's own host and port (the TCP tunnels, the ZeroMQ sockets applications
        connect to), so that they show the ones this gateway really listens on."""
        zeromq = self.config.zeromq
        return web.json_response({
            "tunnels": [{"listen": t.listen, "channel": t.channel} for t in self.config.tunnels],
            "zeromq": {"sub": zeromq.sub, "pull": zeromq.pull},
        }, headers={"Cache-Control": "no-store"})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({
            "status": "ok",
            "ready": self.broker.ready,
            "broker": self.broker.name,
            "node": self.hub.node_id,
            "connections": self.hub.connections,
            "endpoints": {p: len(e.clients) for p, e in self.hub.endpoints.items()},
            "tcp": self.door.stats(),
        })

    def _tcp_metrics(self):
        """The door's counters, for /metrics."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        door = self.door
        yield GaugeMetricFamily("sockway_tcp_connections", "TCP connections open (counted at accept).",
                                value=door.open)
        refused = CounterMetricFamily("sockway_tcp_refused", "TCP connections closed at accept by a limit.",
                                      labels=["limit"])
        refused.add_metric(["max_tcp_connections"], door.refused_total)
        refused.add_metric(["max_tcp_per_address"], door.refused_address)
        yield refused
        timeouts = CounterMetricFamily("sockway_timeouts", "Connections closed by a timeout.", labels=["phase"])
        timeouts.add_metric(["head"], door.head.expired)
        timeouts.add_metric(["send"], door.send.expired)
        yield timeouts
        yield CounterMetricFamily("sockway_bad_requests", "Malformed requests refused before routing.",
                                  value=door.bad_requests)
        yield CounterMetricFamily("sockway_client_resets", "Responses cut short by the client leaving.",
                                  value=door.client_resets)

    async def _readyz(self, request: web.Request) -> web.Response:
        """200 when this node can serve channels (its broker is reachable), else 503: a
        load balancer stops sending new clients here; connected ones stay."""
        ready = self.broker.ready and not self.hub.shutting_down
        return web.json_response({"ready": ready, "broker": self.broker.name},
                                 status=200 if ready else 503)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.cert, self.config.key)
        return context

    async def start(self, sock=None, reuse_port: bool = False, own_port: int | None = None) -> None:
        """Listen and start. ``own_port``: a worker of ``--workers`` also listens there,
        alone (``worker_ports``), for requests meant for this worker."""
        self.runner = web.AppRunner(
            self.app,
            access_log=log if self.config.access_log else None,
            access_log_class=_access_log(self.proxies),
            handle_signals=False,
            shutdown_timeout=self.config.shutdown_timeout,
            keepalive_timeout=self.config.keepalive_timeout,
        )
        await self.runner.setup()
        ssl_context = self.ssl_context()
        http_server = self.runner.server
        assert http_server is not None
        door = self.door

        def http_connection() -> HttpConnection:
            # aiohttp's web.Server makes its own RequestHandler and has no hook for a
            # subclass: make ours with the arguments the runner gave it.
            return HttpConnection(http_server, door, loop=self.loop, **http_server._kwargs)

        def protocol() -> FirstRequestSniffer:
            return FirstRequestSniffer(http_connection, self.routes, door, False, self.config.socket_send_buffer)

        async def listen(port: int, reuse: bool, sock: socket.socket | None = None):
            if ssl_context is None:
                if sock is not None:
                    return await self.loop.create_server(protocol, sock=sock, backlog=4096)
                return await self.loop.create_server(protocol, self.config.host, port, backlog=4096,
                                                     reuse_port=reuse or None)

            # TLS: counted at accept, before the handshake (edge.tls).
            def tls_protocol(ticket) -> FirstRequestSniffer:
                return FirstRequestSniffer(http_connection, self.routes, door, True,
                                           self.config.socket_send_buffer, ticket)

            if sock is None:
                family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
                sock = socket.create_server((self.config.host, port), family=family, backlog=4096,
                                            reuse_port=reuse)
            return TlsListener(self.loop, sock, door, tls_protocol, ssl_context)

        self.servers.append(await listen(self.config.port, reuse_port, sock))
        if own_port is not None:
            self.servers.append(await listen(own_port, False))
        log.info("TCP connections: at most %d, %d per client address (descriptor limit %d)",
                 door.max_total, door.max_per_address, descriptor_limit())
        await self.hub.start(self.config.sweep_interval)
        for bridge in self.bridges:
            await bridge.start()

    @property
    def port(self) -> int:
        """The bound port (useful when the configured port is 0)."""
        return self.servers[0].sockets[0].getsockname()[1]

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Stop accepting, close every client with 1001, wait for them (bounded by
        shutdown_timeout), then close what is left. Every step after the clients' is
        bounded too (STEP_TIMEOUT): a bridge or a broker that does not answer is logged
        with where it waits, and left behind, so the process always exits."""
        for server in self.servers:
            server.close()
        deadline = self.loop.time() + self.config.shutdown_timeout
        await self.hub.shutdown(self.config.shutdown_timeout)
        await self._drain_events(max(0.0, deadline - self.loop.time()))
        for bridge in self.bridges:
            await self._bounded(bridge.stop(), f"stopping {type(bridge).__name__}")
        for endpoint in self.hub.endpoints.values():
            for conn in list(endpoint.clients):
                abort = getattr(conn, "_abort", None)
                if abort is not None:
                    abort()
        if self.runner is not None:
            await self._bounded(self.runner.cleanup(), "closing HTTP connections")
        await self._bounded(self.hub.close_broker(), "disconnecting from the broker")

    async def _bounded(self, step, what: str) -> None:
        try:
            await asyncio.wait_for(step, STEP_TIMEOUT)
        except TimeoutError:
            log.warning("shutdown: %s did not finish within %.0fs; going on", what, STEP_TIMEOUT)
            _dump_tasks()
        except Exception:
            log.exception("shutdown: %s failed", what)

    async def _drain_events(self, timeout: float) -> None:
        """Give the outputs a bounded time to hand over the last events (the closes)."""
        deadline = self.loop.time() + timeout
        while any(len(q) for q in self.hub.events.queues) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)


def _access_log(proxies: ProxyPolicy) -> type[AbstractAccessLogger]:
    """The access log (``access_log = true``): one line per request with the client's
    address as docs/security.md defines it (X-Forwarded-For from a trusted proxy), not
    the TCP peer's that aiohttp's own logger writes."""

    class AccessLog(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            self.logger.info('%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"', proxies.client_address(request),
                             request.method, request.path_qs, request.version.major, request.version.minor,
                             response.status, response.body_length, time,
                             request.headers.get("User-Agent", "-"))

    return AccessLog


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, gateway: Gateway) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Unix
            loop.add_signal_handler(sig, gateway.request_stop)
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)


def _dump_tasks() -> None:
    """``kill -USR1 <pid>``: log every asyncio task and where it waits (for a gateway
    that does not do what it should, such as a shutdown that does not end)."""
    import io

    tasks = asyncio.all_tasks()
    log.warning("SIGUSR1: %d task(s)", len(tasks))
    for task in tasks:
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        log.warning("%r\n%s", task, out.getvalue())


def _use_uvloop() -> None:
    if os.environ.get("SOCKWAY_NO_UVLOOP"):
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: ServerConfig, ready=None, reuse_port: bool = False, own_port: int | None = None) -> None:
    gateway = Gateway(config)
    _install_signal_handlers(asyncio.get_running_loop(), gateway)
    await gateway.start(reuse_port=reuse_port, own_port=own_port)
    scheme = "https" if config.cert else "http"
    endpoints = ", ".join(f"{e.prefix} ({e.mode})" for e in config.endpoints) or "none"
    log.info("sockway listening on %s://%s:%d — endpoints: %s", scheme, config.host,
             gateway.port, endpoints)
    if own_port is not None:
        log.info("this worker alone: %s://%s:%d", scheme, config.host, own_port)
    if ready is not None:
        ready(gateway)
    await gateway.wait_stopped()
    log.info("shutting down: closing %d connection(s)", gateway.hub.connections)
    await gateway.stop()
    log.info("stopped")


def run(config: ServerConfig, reuse_port: bool = False, own_port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT. ``reuse_port``: listen with SO_REUSEPORT, so that
    several worker processes share the port (``sockway serve --workers N``);
    ``own_port``: this worker's own port besides (``worker_ports``)."""
    _use_uvloop()
    raise_descriptor_limit()
    asyncio.run(serve(config, reuse_port=reuse_port, own_port=own_port))
