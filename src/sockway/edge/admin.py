"""The admin side of the gateway: metrics, health, and what the dashboard and the
``sockway trace`` / ``sockway tail`` tools read.

* ``GET /metrics`` -- Prometheus text format or OpenMetrics (open, like most scrape targets).
* ``GET /healthz`` -- liveness: 200 while the process serves.
* ``GET /admin/`` -- the dashboard page (it asks for the API key).
* ``/admin/api/...`` -- JSON and WebSocket streams behind the ``[api] key`` (header
  ``X-API-Key`` / ``Authorization: Bearer``, or ``?key=`` for browsers' WebSockets):
  ``stats``, ``connections``, ``channels``, ``channel?name=``, ``trace`` (WebSocket,
  decoded frames, filters ``endpoint conn user channel match``; a plain GET only checks
  the key and the filter) and ``events`` (WebSocket, application events as emitted;
  unlike a ZeroMQ PULL it takes nothing from the application's workers).

Without an API key the admin API answers 404 with a message saying how to enable it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web
from prometheus_client.exposition import choose_encoder

from sockway.bridge.http_api import key_matches
from sockway.brokers.base import BrokerUnavailable, resolve
from sockway.hub.channels import valid_channel
from sockway.hub.trace import TRACER, TraceFilter, Watch
from sockway.jsonutil import dumps

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sockway.hub.hub import Hub

__all__ = ["add_admin_routes"]

DASHBOARD = Path(__file__).resolve().parent.parent / "static" / "admin.html"


def _json(body, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(body), content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


class Admin:
    def __init__(self, hub: Hub, api_key: str | None, registry: CollectorRegistry) -> None:
        self.hub = hub
        self.registry = registry
        self.key = api_key.encode() if api_key else None
        self.started = time.time()

    def authorized(self, request: web.Request) -> web.Response | None:
        if self.key is None:
            return _error(404, "not_enabled", "the admin API needs an API key: set [api] key (or SOCKWAY_API_KEY)")
        if not key_matches(request, self.key, query=True):
            return _error(401, "unauthorized", "send the API key as X-API-Key, Authorization: Bearer, or ?key=")
        return None

    # -- open ---------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        """The Prometheus text format (0.0.4), or OpenMetrics when the scraper asks for
        it in ``Accept`` (as Prometheus does)."""
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "uptime": round(time.time() - self.started, 3)})

    async def dashboard(self, request: web.Request) -> web.StreamResponse:
        if not DASHBOARD.is_file():
            return _error(404, "not_found", "dashboard page missing from this installation")
        response = web.FileResponse(DASHBOARD)
        response.headers["Cache-Control"] = "no-cache"
        return response

    # -- behind the key -------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        if (refusal := self.authorized(request)) is not None:
            return refusal
        stats = self.hub.stats_dict()
        stats["time"] = time.time()
        stats["uptime"] = round(time.time() - self.started, 3)
        for prefix, endpoint in self.hub.endpoints.items():
            entry = stats["endpoints"].setdefault(prefix, {})
            transports: dict[str, int] = {}
            for conn in endpoint.clients:
                transports[conn.transport_name] = transports.get(conn.transport_name, 0) + 1
            entry.update(bytes_in=endpoint.bytes_in, bytes_out=endpoint.bytes_out,
                         opened=endpoint.opened_total, closed=endpoint.closed_total, transports=transports)
        stats["trace_watchers"] = len(TRACER.watches)
        return _json({"result": stats})

    async def connections(self, request: web.Request) -> web.Response:
        if (refusal := self.authorized(request)) is not None:
            return refusal
        try:
            limit = max(1, min(int(request.query.get("limit", "500")), 10_000))
        except ValueError:
            return _error(400, "bad_request", "'limit' must be an integer")
        wanted = request.query.get("endpoint")
        search = request.query.get("q", "").lower()
        out = []
        total = 0
        now = time.time()
        for prefix, endpoint in self.hub.endpoints.items():
            if wanted and prefix != wanted:
                continue
            for conn in endpoint.clients:
                entry = {"conn": conn.id, "endpoint": prefix, "transport": conn.transport_name,
                         "remote": conn.remote, "user": conn.user,
                         "channels": sorted(conn.channels or ()), "age": round(now - conn.opened_at, 1)}
                if search and search not in dumps(entry).decode().lower():
                    continue
                total += 1
                if len(out) < limit:
                    out.append(entry)
        return _json({"result": {"connections": out, "total": total}})

    async def channels(self, request: web.Request) -> web.Response:
        if (refusal := self.authorized(request)) is not None:
            return refusal
        out = []
        for name, local in sorted(self.hub.channels.channels.items()):
            ns = self.hub.config.namespace(name)
            out.append({"channel": name, "subscribers": local.count, "namespace": ns.name,
                        "history_size": self.hub.channels.policy(name).size, "presence": ns.presence})
        return _json({"result": {"channels": out}})

    async def channel(self, request: web.Request) -> web.Response:
        """One channel as this node sees it: its local subscribers, its presence (when
        the namespace keeps it) and the last ``limit`` (default 20) publications of its
        history. Read from the broker directly: the dashboard polling this is not an
        application command (``sockway_commands_total`` stays the application's)."""
        if (refusal := self.authorized(request)) is not None:
            return refusal
        name = request.query.get("name", "")
        if not valid_channel(name):
            return _error(400, "bad_channel", "'name' must be a channel name: 1-255 characters of letters, "
                          "digits and _.:@/=+-")
        try:
            limit = max(0, min(int(request.query.get("limit", "20")), 1000))
        except ValueError:
            return _error(400, "bad_request", "'limit' must be an integer")
        channels = self.hub.channels
        namespace = self.hub.config.namespace(name)
        try:
            found = await resolve(channels.broker.history(name, channels.policy(name), None, limit))
            presence = await resolve(channels.broker.presence(name)) if namespace.presence else None
        except BrokerUnavailable as exc:
            return _error(503, "unavailable", f"the broker is unavailable: {exc}")
        local = channels.channels.get(name)
        now = time.time()
        subscribers = []
        if local is not None:
            for group in local.groups.values():
                subscribers.extend({"conn": conn.id, "endpoint": conn.endpoint.prefix,
                                    "transport": conn.transport_name, "user": conn.user,
                                    "remote": conn.remote, "age": round(now - conn.opened_at, 1)}
                                   for conn in group)
        history = {"offset": found.position.offset, "epoch": found.position.epoch,
                   "publications": [p.as_dict() for p in found.publications]}
        return _json({"result": {"channel": name, "namespace": namespace.name,
                                 "history_size": channels.policy(name).size, "subscribers": subscribers,
                                 "presence": presence, "history": history}})

    async def trace(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self.authorized(request)) is not None:
            return refusal
        q = request.query
        try:
            trace_filter = TraceFilter(q.get("endpoint"), q.get("conn"), q.get("user"), q.get("channel"),
                                       q.get("match"))
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        ws = web.WebSocketResponse(heartbeat=20)
        if not ws.can_prepare(request).ok:
            # A plain GET checks the key and the filter (the dashboard does this first: a
            # browser's WebSocket shows no status or body when the handshake fails).
            return _json({"result": {"filter": trace_filter.describe(),
                                     "stream": "open this URL as a WebSocket to receive the records"}})
        await ws.prepare(request)
        watch = Watch(trace_filter)
        TRACER.add(watch)
        await ws.send_str(dumps({"type": "trace", "filter": trace_filter.describe()}).decode())
        try:
            await self._pump(ws, watch.get_batch, lambda: watch.dropped)
        finally:
            TRACER.remove(watch)
        return ws

    async def events(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self.authorized(request)) is not None:
            return refusal
        endpoint = request.query.get("endpoint")
        kinds = set(filter(None, request.query.get("type", "").split(",")))
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        watch = Watch(TraceFilter())

        def listener(event: dict, data: bytes) -> None:
            if endpoint and event.get("endpoint") != endpoint:
                return
            if kinds and event.get("type") not in kinds:
                return
            watch.put(event)

        self.hub.events.listeners.append(listener)
        await ws.send_str(dumps({"type": "events"}).decode())
        try:
            await self._pump(ws, watch.get_batch, lambda: watch.dropped)
        finally:
            self.hub.events.listeners.remove(listener)
        return ws

    async def _pump(self, ws: web.WebSocketResponse, get_batch, dropped) -> None:
        """Send batches until the watcher goes away (what it sends is ignored). Sending
        waits for the watcher's socket to drain; meanwhile records queue in its bounded
        watch, the gateway never waits."""
        receiving = asyncio.ensure_future(ws.receive())
        try:
            while not ws.closed:
                batch_task = asyncio.ensure_future(get_batch(1.0))
                done, _ = await asyncio.wait({batch_task, receiving}, return_when=asyncio.FIRST_COMPLETED)
                if receiving in done:
                    batch_task.cancel()
                    message = receiving.result()
                    if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                        break
                    receiving = asyncio.ensure_future(ws.receive())
                    if batch_task not in done:
                        continue
                batch = batch_task.result()
                if batch:
                    await ws.send_str(dumps({"type": "batch", "items": batch, "dropped": dropped()}).decode())
        except ConnectionError:
            pass  # the watcher went away while a batch was being written
        finally:
            receiving.cancel()


def add_admin_routes(app: web.Application, hub: Hub, api_key: str | None, registry: CollectorRegistry) -> Admin:
    admin = Admin(hub, api_key, registry)
    app.router.add_get("/metrics", admin.metrics)
    app.router.add_get("/healthz", admin.healthz)
    async def to_dashboard(request: web.Request) -> web.Response:
        raise web.HTTPFound("/admin/")

    app.router.add_get("/admin", to_dashboard)
    app.router.add_get("/admin/", admin.dashboard)
    app.router.add_get("/admin/api/stats", admin.stats)
    app.router.add_get("/admin/api/connections", admin.connections)
    app.router.add_get("/admin/api/channels", admin.channels)
    app.router.add_get("/admin/api/channel", admin.channel)
    app.router.add_get("/admin/api/trace", admin.trace)
    app.router.add_get("/admin/api/events", admin.events)
    return admin
