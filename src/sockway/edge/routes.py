"""Routing of one endpoint's URL space (sockjs-protocol "Base URL" and "Session URLs")
to the greeting, info, iframe, transport and WebSocket handlers."""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import TYPE_CHECKING

from aiohttp import web

from sockway import closecodes
from sockway.auth import AuthError
from sockway.brokers.base import BrokerUnavailable
from sockway.edge import http_util as h
from sockway.edge.body import BodyError, read_body
from sockway.edge.hixie import Hixie76SockJS, handshake_head
from sockway.edge.security import OriginPolicy, ProxyPolicy
from sockway.edge.sockjs_http import (
    TRANSPORT_NAMES,
    EventSource,
    HtmlFile,
    HttpSession,
    SessionRegistry,
    XhrStreaming,
    frame_wrapper,
    polling_wrapper,
    run_polling,
    run_relayed_streaming,
    run_streaming,
)
from sockway.edge.sockjs_relay import SESSION_LOST, session_relay
from sockway.edge.upgrade import Detached, accept_websocket, detach
from sockway.edge.websocket import RawWebSocket, SockJSWebSocket
from sockway.hub.connection import ConnectionInfo
from sockway.hub.trace import TRACER
from sockway.ratelog import RateLimitedLog
from sockway.sockjs.frames import CALLBACK_RE, HEARTBEAT, info_body
from sockway.sockjs.payload import PayloadError, decode_messages, form_field, utf8_size
from sockway.sockjs.urls import parse_path
from sockway.ws import hixie76

if TYPE_CHECKING:
    from sockway.hub.endpoint import Endpoint

__all__ = ["EndpointRoutes", "iframe_page"]

log = logging.getLogger("sockway.edge")
complaints = RateLimitedLog(log)
"""Refused origins: one line each (a few per minute per endpoint), so that an operator
can see why a browser shows only a CORS error."""

GREETING = "Welcome to SockJS!\n"

_IFRAME_TEMPLATE = """<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{sockjs_url}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"""


def iframe_page(sockjs_url: str) -> bytes:
    """The iframe page of sockjs-protocol "IFrame page", loading ``sockjs_url``."""
    url = sockjs_url.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return _IFRAME_TEMPLATE.format(sockjs_url=url).encode("utf-8")


STREAMING = {"xhr_streaming": XhrStreaming, "eventsource": EventSource}
RECEIVING = {"xhr", "xhr_streaming", "eventsource", "htmlfile", "jsonp"}


class EndpointRoutes:
    """The aiohttp handler for everything under one endpoint prefix."""

    def __init__(self, endpoint: Endpoint, *, sockjs_url: str, allowed_origins: list[str],
                 proxies: ProxyPolicy) -> None:
        self.endpoint = endpoint
        self.config = config = endpoint.config
        self.relay = session_relay(endpoint.hub)
        """Set when the broker shares SockJS sessions between nodes (edge.sockjs_relay)."""
        self.registry = SessionRegistry(endpoint, self.relay)
        if self.relay is not None:
            self.relay.add(self)
        self.origins = OriginPolicy(
            config.allowed_origins if config.allowed_origins is not None else allowed_origins
        )
        self.frame_policy = self.origins.frame_ancestors()
        self.proxies = proxies
        self.iframe = iframe_page(sockjs_url)
        self.iframe_etag = '"' + hashlib.md5(self.iframe).hexdigest() + '"'
        endpoint.hub.add_sweeper(self._keepalive)

    # -- dispatch -----------------------------------------------------------------------

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        route = parse_path(tail)
        kind = route.kind
        if kind == "not_found":
            return h.empty_response(404)
        if kind == "greeting":
            if request.method not in ("GET", "HEAD"):
                return h.empty_response(405, {"Allow": "GET"})
            return h.text_response(200, GREETING)
        if kind == "iframe":
            return self.iframe_response(request)
        if not self.config.sockjs and kind != "raw_websocket":
            return h.empty_response(404)
        refusal = self.origin_refusal(request, route.transport or kind)
        if refusal is not None:
            return refusal
        if kind == "info":
            return self.info(request)
        if kind == "raw_websocket":
            return await self.websocket(request, sockjs=False)
        transport = route.transport
        if transport == "websocket":
            return await self.websocket(request, sockjs=True)
        if request.method == "OPTIONS":
            if transport in ("xhr", "xhr_send", "xhr_streaming"):
                return self.options(request, "OPTIONS, POST")
            return h.empty_response(405, {"Allow": self.allowed_methods(transport)})
        if transport in ("xhr_send", "jsonp_send"):
            if request.method != "POST":
                return h.empty_response(405, {"Allow": self.allowed_methods(transport)})
            return await self.send(request, route.session, transport)
        expected = "POST" if transport.startswith("xhr") else "GET"
        if request.method != expected:
            return h.empty_response(405, {"Allow": self.allowed_methods(transport)})
        return await self.receive(request, route.session, transport)

    @staticmethod
    def allowed_methods(transport: str) -> str:
        if transport.startswith("xhr"):
            return "OPTIONS, POST"
        if transport == "jsonp_send":
            return "POST"
        return "GET"

    def origin_refusal(self, request: web.BaseRequest, what: str) -> web.Response | None:
        """The 403 for a request whose page is not of an allowed origin (None: it may
        go on). ``what``: the transport, or the kind of request.

        A request with an Origin is judged by it. One without is let through (a
        program, or a same-origin GET), except a jsonp poll under an allow-list: a
        ``<script>`` load never carries an Origin, and whatever it loads any page can
        read. It is judged by its Referer instead, which browsers set and pages cannot
        forge (only suppress); without one it is refused unless the endpoint sets
        ``jsonp_without_referer`` (docs/security.md, "Transports that cannot carry an
        Origin")."""
        policy = self.origins
        if policy.any:
            return None
        origin = request.headers.get("Origin")
        if origin is not None:
            if policy.allows(origin, self.proxies.own_origin(request)):
                return None
            self._log_refusal(request, what, f"Origin {origin[:200]!r}")
            return h.text_response(403, "Origin not allowed by this server's allowed_origins.\n")
        if what != "jsonp":
            return None
        referer = request.headers.get("Referer")
        if referer is None:
            if self.config.jsonp_without_referer:
                return None
            self._log_refusal(request, what, "no Origin nor Referer (jsonp_without_referer is off)")
        elif policy.allows_referer(referer, self.proxies.own_origin(request)):
            return None
        else:
            self._log_refusal(request, what, f"Referer {referer[:200]!r}")
        return h.text_response(403, "jsonp polling needs a Referer of a page whose origin is in this "
                                    "server's allowed_origins.\n")

    def _log_refusal(self, request: web.BaseRequest, what: str, why: str) -> None:
        complaints.warning(f"origin {self.endpoint.prefix}", "%s: %s request from %s refused: %s; allowed: %s",
                           self.endpoint.prefix, what, self.proxies.client_address(request), why,
                           self.origins.describe())

    def authenticate(self, request: web.BaseRequest) -> tuple[dict | None, str | None]:
        """Verify the ``token`` query parameter, if any: (claims, None) or (None, why)."""
        token = request.query.get("token")
        if token is None:
            return None, None
        try:
            return self.endpoint.hub.auth.verify(token), None
        except AuthError as exc:
            return None, str(exc)

    @staticmethod
    def apply_auth(conn, claims: dict | None, error: str | None) -> None:
        conn.claims = claims
        conn.auth_error = error
        if claims is not None and "sub" in claims:
            conn.user = str(claims["sub"])

    def connection_info(self, request: web.BaseRequest, remote: str) -> ConnectionInfo | None:
        if not (self.config.keep_request_info or getattr(self.endpoint.mode, "needs_info", False)):
            return None
        return ConnectionInfo(
            remote,
            request.path,
            request.query_string,
            tuple((k, v) for k, v in request.headers.items() if k.lower() != "cookie"),
        )

    # -- static pieces ------------------------------------------------------------------

    def iframe_response(self, request: web.BaseRequest) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return h.empty_response(405, {"Allow": "GET"})
        if request.headers.get("If-None-Match") == self.iframe_etag:
            response = h.empty_response(304)
        else:
            response = web.Response(body=self.iframe, content_type="text/html", charset="UTF-8")
        h.cache_for_a_year(response.headers)
        del response.headers["Access-Control-Max-Age"]
        response.headers["ETag"] = self.iframe_etag
        self._frame_ancestors(response.headers)
        return response

    def _frame_ancestors(self, headers) -> None:
        """Only pages of allowed origins may embed the iframe page and htmlfile: the
        iframe page runs the iframe transports for whichever page embeds it, on the
        gateway's own origin, where Origin checks cannot tell that page apart
        (docs/security.md)."""
        policy = self.frame_policy
        if policy is not None:
            headers["Content-Security-Policy"] = policy

    def info(self, request: web.BaseRequest) -> web.Response:
        if request.method == "OPTIONS":
            return self.options(request, "OPTIONS, GET")
        if request.method != "GET":
            return h.empty_response(405, {"Allow": "OPTIONS, GET"})
        body = info_body(self.config.websocket, self.config.cookie_needed,
                         secrets.randbits(32))
        response = web.Response(body=body, content_type="application/json", charset="UTF-8")
        response.headers["Cache-Control"] = h.NO_CACHE
        h.cors_headers(request, response.headers)
        return response

    def options(self, request: web.BaseRequest, methods: str) -> web.Response:
        response = h.empty_response(204)
        h.cache_for_a_year(response.headers)
        response.headers["Access-Control-Allow-Methods"] = methods
        h.cors_headers(request, response.headers)
        return response

    # -- receiving and sending transports -------------------------------------------------

    def _callback(self, request: web.BaseRequest) -> tuple[str | None, web.Response | None]:
        callback = request.query.get("c")
        if callback is None:
            callback = request.query.get("callback")
        if not callback:
            return None, h.text_response(500, '"callback" parameter required')
        if not CALLBACK_RE.fullmatch(callback):
            return None, h.text_response(500, 'invalid "callback" parameter')
        return callback, None

    def _session_headers(self, request: web.BaseRequest, headers) -> None:
        headers["Cache-Control"] = h.NO_CACHE
        if self.config.cookie_needed:
            h.jsessionid(request, headers)

    async def receive(self, request: web.Request, session_id: str, transport: str):
        callback = None
        if transport in ("htmlfile", "jsonp"):
            callback, error = self._callback(request)
            if error is not None:
                return error
        session = self.registry.get(session_id)
        if session is None and self.relay is not None:
            relayed = await self._receive_shared(request, session_id, transport, callback)
            if relayed is not None:
                return relayed
            session = self.registry.get(session_id)  # opened by a request that came meanwhile
        if session is None:
            if not self.endpoint.accepting:
                self.endpoint.hub.stats.rejected_connections += 1
                if self.relay is not None:
                    self.relay.release(self.endpoint.prefix, session_id)
                return h.text_response(503, "Too many connections; try again later.\n")
            remote = self.proxies.client_address(request)
            session = self.registry.create(session_id, remote,
                                           self.connection_info(request, remote),
                                           TRANSPORT_NAMES[transport])
            self.apply_auth(session, *self.authenticate(request))
        else:
            session.transport_name = TRANSPORT_NAMES[transport]
        if transport in ("xhr", "jsonp"):
            response = self._polling_response(request, transport)
            wrap = polling_wrapper(transport, callback.encode() if callback else None)
            return await run_polling(session, request, response, wrap)
        streaming, response = self._streaming_response(request, transport, callback)
        return await run_streaming(session, request, response, streaming)

    def _polling_response(self, request: web.BaseRequest, transport: str) -> web.Response:
        response = web.Response(content_type="application/javascript", charset="UTF-8")
        self._session_headers(request, response.headers)
        if transport == "xhr":
            h.cors_headers(request, response.headers)
        return response

    def _streaming_response(self, request: web.BaseRequest, transport: str, callback: str | None):
        streaming = HtmlFile(callback) if transport == "htmlfile" else STREAMING[transport]()
        response = web.StreamResponse()
        response.headers["Content-Type"] = streaming.content_type
        self._session_headers(request, response.headers)
        if transport == "htmlfile":
            self._frame_ancestors(response.headers)
        if transport in ("xhr_streaming", "eventsource"):
            # sockjs-client opens EventSource cross-origin too, so it needs CORS like
            # the XHR transports.
            h.cors_headers(request, response.headers)
        return streaming, response

    async def _receive_shared(self, request: web.Request, session_id: str, transport: str,
                              callback: str | None) -> web.StreamResponse | None:
        """A receiving request for a session this node does not have: claim the session
        (None: it is this node's now, open it here) or relay the request to its owner
        (edge.sockjs_relay)."""
        relay = self.relay
        assert relay is not None
        prefix = self.endpoint.prefix
        poll = transport in ("xhr", "jsonp")
        fresh = False
        while True:
            try:
                owner, cached = await relay.locate(prefix, session_id, claim=True, fresh=fresh)
            except BrokerUnavailable as exc:
                relay.unavailable(exc)
                return None  # serve it here: it works when the load balancer keeps the client here
            if owner is None or owner == relay.node_id:
                return None
            call = relay.receive(owner, prefix, session_id, request, transport, callback)
            status, end, data = await call.open(poll, self.config.heartbeat_delay)
            if status in ("unknown", "lost") and cached:
                relay.forget(prefix, session_id)  # a stale cache entry: look it up again
                fresh = True
                continue
            break
        if status in ("unknown", "lost"):
            # The owner is gone (or no longer has it): its queue and state died with it.
            data, end = frame_wrapper(transport, callback)(SESSION_LOST), True
        elif status == "aborted":
            return web.Response(status=204)  # the client went away; nothing will read this
        elif status == "stopping":
            # This node is shutting down: end the poll with a heartbeat; the client's next
            # poll goes to another node and finds the session where it was.
            data, end = frame_wrapper(transport, callback)(HEARTBEAT), True
        elif status != "ok":
            return h.text_response(503, "The node holding this session cannot be reached; try again.\n")
        if poll:
            response = self._polling_response(request, transport)
            self.endpoint.bytes_out += len(data)
            response.body = data
            return response
        streaming, response = self._streaming_response(request, transport, callback)
        return await run_relayed_streaming(call, request, response, streaming, data, end, self.endpoint)

    async def send(self, request: web.Request, session_id: str, transport: str):
        response = await self._send(request, session_id, transport)
        if transport == "xhr_send":
            # On errors too: a cross-origin client otherwise sees status 0, not the error.
            h.cors_headers(request, response.headers)
        return response

    async def _send(self, request: web.Request, session_id: str, transport: str):
        session = self.registry.get(session_id)
        if session is None and self.relay is not None:
            return await self._send_shared(request, session_id, transport)
        if session is None or session.core.closed:
            return h.empty_response(404)
        body = await self._send_body(request, transport)
        if not isinstance(body, bytes):
            return body
        return self._send_response(request, transport, *self.deliver(session, body, transport))

    async def _send_body(self, request: web.Request, transport: str) -> bytes | web.Response:
        """The messages' JSON of a send (from the ``d`` field of a jsonp_send form), or
        the error response."""
        limit = self.config.max_message_size
        try:
            body = await read_body(request, limit * 2 + 64, self.endpoint.hub.config.body_timeout)
        except BodyError as exc:
            if exc.status == 413:
                return h.text_response(413, f"Payload over the {limit} byte limit.\n")
            response = h.text_response(exc.status, exc.message.capitalize() + ".\n")
            response.force_close()  # a client this slow does not get to linger
            return response
        self.endpoint.bytes_in += len(body)
        if transport == "jsonp_send" and request.content_type == "application/x-www-form-urlencoded":
            body = form_field(body)
        return body

    def deliver(self, session: HttpSession, body: bytes, transport: str) -> tuple[int, str | None]:
        """Hand a send's messages to the endpoint; returns the HTTP status and text the
        client gets. Synchronous: the owner of a shared session runs it for the node that
        got the request (edge.sockjs_relay)."""
        if session.core.closed:
            return 404, None
        if TRACER.active:
            TRACER.sockjs(session, "in", body)
        try:
            messages = decode_messages(body)
        except PayloadError as exc:
            return 500, str(exc)
        limit = self.config.max_message_size
        for message in messages:
            if utf8_size(message) > limit:
                session.close(closecodes.MESSAGE_TOO_BIG, "Message too big")
                return 413, f"Message over the {limit} byte limit.\n"
        received = self.endpoint.received
        for message in messages:
            received(session, message)
        return (204, None) if transport == "xhr_send" else (200, "ok")

    def _send_response(self, request: web.BaseRequest, transport: str, status: int,
                       text: str | None) -> web.Response:
        if status == 204:
            response = web.Response(status=204, content_type="text/plain", charset="UTF-8")
        elif status == 200:
            response = h.text_response(200, text or "ok")
        elif text is None:
            return h.empty_response(status)
        else:
            return h.text_response(status, text)
        self._session_headers(request, response.headers)
        return response

    async def _send_shared(self, request: web.Request, session_id: str, transport: str) -> web.Response:
        """A send for a session this node does not have: relay it to the owner."""
        relay = self.relay
        assert relay is not None
        prefix = self.endpoint.prefix
        try:
            owner, cached = await relay.locate(prefix, session_id, claim=False)
        except BrokerUnavailable as exc:
            relay.unavailable(exc)
            return h.text_response(503, "Sessions cannot be looked up now; try again.\n")
        if owner is None or owner == relay.node_id:
            return h.empty_response(404)
        body = await self._send_body(request, transport)
        if not isinstance(body, bytes):
            return body
        status, http_status, text = await relay.send(owner, prefix, session_id, transport, body)
        if status in ("unknown", "lost") and cached:
            relay.forget(prefix, session_id)
            try:
                owner, _ = await relay.locate(prefix, session_id, claim=False, fresh=True)
            except BrokerUnavailable as exc:
                relay.unavailable(exc)
                return h.text_response(503, "Sessions cannot be looked up now; try again.\n")
            if owner is None or owner == relay.node_id:
                return h.empty_response(404)
            status, http_status, text = await relay.send(owner, prefix, session_id, transport, body)
        if status in ("timeout", "unavailable"):
            return h.text_response(503, "The node holding this session cannot be reached; try again.\n")
        return self._send_response(request, transport, http_status, text)

    # -- WebSocket ------------------------------------------------------------------------

    async def websocket(self, request: web.Request, *, sockjs: bool) -> web.StreamResponse:
        config = self.config
        if request.method != "GET":
            return h.empty_response(405, {"Allow": "GET"})
        if not config.websocket:
            return h.empty_response(404)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return h.text_response(400, 'Can "Upgrade" only to "WebSocket".\n')
        tokens = [t.strip().lower() for t in request.headers.get("Connection", "").split(",")]
        if "upgrade" not in tokens:
            return h.text_response(400, 'Not a valid websocket request: "Connection" must be "Upgrade".\n')
        if not self.endpoint.accepting:
            self.endpoint.hub.stats.rejected_connections += 1
            return h.text_response(503, "Too many connections; try again later.\n")
        remote = self.proxies.client_address(request)
        # A bad token does not refuse the handshake: a browser shows a refused handshake
        # as a bare 1006, like a network failure, and would retry. The connection opens
        # and is closed at once with 4001 and the reason, which every client can read.
        claims, auth_error = self.authenticate(request)
        live, head, wbits, refusal = accept_websocket(
            request,
            deflate=config.permessage_deflate,
            window_bits=config.deflate_window_bits,
            subprotocols=config.subprotocols if not sockjs else None,
            max_size=config.max_message_size,
        )
        if refusal is not None:
            return refusal
        info = self.connection_info(request, remote)
        try:
            transport, tail, ticket = detach(request)
        except ConnectionResetError:
            return Detached()
        try:
            transport.write(head)
            cls = SockJSWebSocket if sockjs else RawWebSocket
            conn = cls(self.endpoint, live, transport, self.endpoint.hub.coalescer, remote,
                       info, wbits, config.max_buffer)
            self.apply_auth(conn, claims, auth_error)
            conn.ticket, ticket = ticket, None
            conn.start(tail)
        except Exception:
            log.exception("%s: could not start a WebSocket connection", self.endpoint.prefix)
            transport.abort()
            if ticket is not None:
                ticket.release()
        return Detached()

    def start_hixie76(self, transport, headers: dict[str, str], target: str, secure: bool,
                      tail: bytes, ticket=None) -> tuple[int, str] | None:
        """Take over a hixie-76 handshake found by :mod:`sockway.edge.sniffer` (aiohttp
        refuses these requests). ``headers`` have lower-case names. Everything is
        checked before the handshake is answered (the answer goes out before the key
        bytes come): None when it was answered, else the refusal's status and message.
        The client address, the origin check and the connection limit are those of every
        other upgrade (trusted proxies' X-Forwarded-* included): a refused origin gets
        403, a full endpoint 503."""
        config = self.config
        if not config.websocket or not config.sockjs:
            return 404, "WebSocket is not offered on this endpoint."
        host = headers.get("host", "")
        origin = headers.get("origin")
        peer = transport.get_extra_info("peername")
        peer_address = peer[0] if peer else "?"
        own = self.proxies.origin_of(peer_address, secure, host, headers.get("x-forwarded-proto"),
                                     headers.get("x-forwarded-host"))
        if not self.origins.allows(origin, own):
            complaints.warning(f"origin {self.endpoint.prefix}", "%s: hixie-76 websocket request from %s refused: "
                               "Origin %r; allowed: %s", self.endpoint.prefix, peer_address,
                               (origin or "")[:200], self.origins.describe())
            return 403, "Origin not allowed by this server's allowed_origins."
        if headers.get("upgrade", "").lower() != "websocket":
            return 400, 'Can "Upgrade" only to "WebSocket".'
        try:
            keys = (hixie76.key_number(headers["sec-websocket-key1"]),
                    hixie76.key_number(headers.get("sec-websocket-key2", "")))
        except (KeyError, ValueError) as exc:
            return 400, f"Not a valid hixie-76 handshake: {exc}."
        if not self.endpoint.accepting:
            self.endpoint.hub.stats.rejected_connections += 1
            return 503, "Too many connections; try again later."
        forwarded_for = headers.get("x-forwarded-for")
        remote = self.proxies.address_of(peer_address, [forwarded_for] if forwarded_for else [])
        location = f"{'wss' if secure else 'ws'}://{host}{target}"
        transport.write(handshake_head(origin or "", location, headers.get("sec-websocket-protocol")))
        conn = Hixie76SockJS(self.endpoint, transport, remote, keys, ticket)
        conn.start(tail)
        return None

    def _keepalive(self, now: float) -> None:
        """Pings for raw WebSockets, heartbeats for SockJS ones."""
        config = self.config
        interval, timeout = config.heartbeat_delay, config.ping_timeout
        for conn in list(self.endpoint.clients):
            keepalive = getattr(conn, "keepalive", None)
            if keepalive is not None:
                keepalive(now, interval, timeout)


