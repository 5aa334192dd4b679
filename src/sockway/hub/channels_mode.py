"""The ``channels`` mode: a small JSON protocol clients speak over any transport.

Client to server (``id`` is optional; a command with an ``id`` gets a reply)::

    {"op": "auth", "token": "<JWT>", "id": 1}
    {"op": "subscribe", "channel": "news", "since": {"offset": 41, "epoch": "9f2c"}, "id": 2}
    {"op": "unsubscribe", "channel": "news", "id": 3}
    {"op": "publish", "channel": "chat:lobby", "data": {"text": "hi"}, "id": 4}
    {"op": "presence", "channel": "chat:lobby", "id": 5}
    {"op": "history", "channel": "news", "limit": 10, "id": 6}
    {"op": "message", "data": ...}          (to the application, as a "message" event)
    {"op": "ping", "id": 7}

Server to client::

    {"type": "connected", "conn": "<id>", "user": "alice"}
    {"type": "reply", "id": 2, "result": {"channel": "news", "offset": 57, "epoch": "9f2c",
                                          "recovered": true, "recoverable": true,
                                          "publications": [...]}}
    {"type": "reply", "id": 4, "error": {"code": "forbidden", "message": "..."}}
    {"type": "message", "channel": "news", "offset": 58, "epoch": "9f2c", "data": ...}
    {"type": "message", "data": ...}        (sent to this connection by the application)
    {"type": "join" | "leave", "channel": "chat:lobby", "conn": "<id>", "info": {...}}
    {"type": "error", "error": {"code": ..., "message": ...}}   (a command without id failed)

The subscribe reply: ``offset``/``epoch`` is the channel's position; with ``since``,
``publications`` are the ones missed after it (each ``{"offset", "data", "time"}``, in
order) and ``recovered`` says whether that is all of them (same epoch, nothing expired
in between); ``recoverable`` says whether the channel keeps history at all, so whether a
client should ask with ``since`` after a reconnect (without history, any publication
missed is lost, and a position is not kept once nobody is subscribed).

On an endpoint with ``anonymous = true`` a client is welcomed at once and may send
``auth`` later (to log in): the reply carries its user, and the application gets an
``auth`` event rather than a second ``open``. With ``anonymous = false`` it is welcomed
(``connected``, and the ``open`` event) only once authenticated.

Permissions come from the channel's ``[[namespace]]``: ``open``, ``token`` (the JWT's
``channels``/``publish`` claims), ``app`` (the application answers a ``subscribe`` or
``publish`` event with the ``reply`` command) or ``none``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sockway import closecodes
from sockway.auth import AuthError, claim_allows
from sockway.bridge.commands import CommandError, encode_data, json_size, parse_position
from sockway.brokers.base import BrokerUnavailable, ChannelLimit
from sockway.hub.channels import ENVELOPE, SubscribeResult, valid_channel
from sockway.hub.message import OutMessage
from sockway.hub.modes import Mode, register_mode
from sockway.jsonutil import dumps_str, loads

if TYPE_CHECKING:
    from sockway.hub.connection import Connection

__all__ = ["ChannelsMode"]

log = logging.getLogger("sockway.channels")

MAX_COMMAND = 1 << 20
MAX_SUBSCRIPTIONS = 1024
"""Channels one client may subscribe itself to (the application's ``subscribe``
command is not counted against it). Each subscription costs about 1 KiB (the
connection's entry, the local channel and its group, the broker's stream): without a
bound one anonymous client could subscribe to millions of made-up channels."""


def _reply(conn: Connection, request_id: Any, result: dict | None = None,
           error: CommandError | None = None) -> None:
    if request_id is None and error is None:
        return
    if request_id is None:
        frame = {"type": "error", "error": error.as_dict()}  # type: ignore[union-attr]
    elif error is not None:
        frame = {"type": "reply", "id": request_id, "error": error.as_dict()}
    else:
        frame = {"type": "reply", "id": request_id, "result": result or {}}
    conn.send(OutMessage(dumps_str(frame)))


@register_mode
class ChannelsMode(Mode):
    name = "channels"
    authenticates_later = True
    channel_format = ENVELOPE

    def on_open(self, conn: Connection) -> None:
        if conn.claims is None and not self.endpoint.config.anonymous:
            # Wait for {"op": "auth"}; close if it does not come in time.
            self.hub.loop.call_later(self.endpoint.config.auth_timeout, self._auth_deadline, conn)
            return
        self._welcome(conn)

    def _welcome(self, conn: Connection) -> None:
        conn.send(OutMessage(dumps_str({"type": "connected", "conn": conn.id, "user": conn.user})))
        self.hub.events.emit(conn, "open", user=conn.user, remote=conn.remote,
                             transport=conn.transport_name)

    def _auth_deadline(self, conn: Connection) -> None:
        if conn.claims is None and conn.is_open:
            self.hub.stats.auth_failures += 1
            conn.close(closecodes.AUTH_TIMEOUT, "authentication timeout: send {\"op\": \"auth\"}")

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        if conn.claims is not None or self.endpoint.config.anonymous:
            self.hub.events.emit(conn, "close", code=code, reason=reason)

    # -- the protocol ------------------------------------------------------------------

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        request_id = None
        try:
            if len(data) > MAX_COMMAND:
                raise CommandError("too_large", f"a command is at most {MAX_COMMAND} bytes")
            try:
                cmd = loads(data)
            except (ValueError, UnicodeDecodeError):
                raise CommandError("bad_request", "a command is a JSON object") from None
            except RecursionError:  # nested past the parser's limit
                raise CommandError("bad_request", "the command is nested too deeply") from None
            if not isinstance(cmd, dict):
                raise CommandError("bad_request", "a command is a JSON object with an 'op' field")
            request_id = cmd.get("id")
            if request_id is not None and not isinstance(request_id, (int, str)):
                request_id = None
                raise CommandError("bad_request", "'id' must be a number or a string")
            op = cmd.get("op")
            if op == "auth":
                self._auth(conn, cmd, request_id)
                return
            if conn.claims is None and not self.endpoint.config.anonymous:
                raise CommandError("unauthorized", "authenticate first: {\"op\": \"auth\", \"token\": ...}")
            handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                raise CommandError("unknown_op", f"unknown op {op!r}; known: auth, subscribe, "
                                   "unsubscribe, publish, presence, history, message, ping")
            handler(conn, cmd, request_id)
        except CommandError as exc:
            _reply(conn, request_id, error=exc)

    def _auth(self, conn: Connection, cmd: dict, request_id: Any) -> None:
        if conn.claims is not None:
            raise CommandError("bad_request", "already authenticated")
        try:
            claims = self.hub.auth.verify(cmd.get("token"))
        except AuthError as exc:
            self.hub.stats.auth_failures += 1
            _reply(conn, request_id, error=CommandError("unauthorized", str(exc)))
            conn.close(closecodes.UNAUTHORIZED, str(exc)[:120])
            return
        conn.claims = claims
        conn.user = str(claims["sub"]) if "sub" in claims else None
        _reply(conn, request_id, {"conn": conn.id, "user": conn.user})
        if self.endpoint.config.anonymous:
            # Welcomed (and announced with "open") when it connected, anonymously: it
            # has now logged in. One "connected", one "open" per connection.
            self.hub.events.emit(conn, "auth", user=conn.user)
        else:
            self._welcome(conn)

    def _check(self, conn: Connection, action: str, channel: str, then, request_id: Any) -> None:
        """Run ``then()`` if the namespace rules allow ``action`` on ``channel``."""
        ns = self.hub.config.namespace(channel)
        rule = ns.subscribe if action == "subscribe" else ns.publish
        if rule == "open":
            then()
        elif rule == "token":
            claim = "channels" if action == "subscribe" else "publish"
            if claim_allows(conn.claims, claim, channel):
                then()
            else:
                raise CommandError("forbidden", f"your token's '{claim}' claim does not cover {channel!r}")
        elif rule == "app":
            event = self.hub.events.emit(conn, action, channel=channel, user=conn.user)
            if event is None:
                raise CommandError("forbidden", f"{action} on {channel!r} is decided by the application, "
                                   "and no application output is configured")

            def answer(allow: bool, reason: str) -> None:
                if not conn.is_open:
                    return
                if allow:
                    try:
                        then()
                    except CommandError as exc:
                        _reply(conn, request_id, error=exc)
                else:
                    _reply(conn, request_id, error=CommandError(
                        "forbidden", reason or f"the application refused {action} on {channel!r}"))

            self.hub.decisions.ask(event["id"], self.endpoint.config.auth_timeout, answer)
        else:
            raise CommandError("forbidden", f"clients may not {action} on {channel!r}")

    def _channel(self, cmd: dict) -> str:
        channel = cmd.get("channel")
        if not valid_channel(channel):
            raise CommandError("bad_channel",
                               "'channel' must be 1-255 characters of letters, digits and _.:@/=+-")
        return channel  # type: ignore[return-value]

    def _op_subscribe(self, conn: Connection, cmd: dict, request_id: Any) -> None:
        channel = self._channel(cmd)
        since = parse_position(cmd.get("since"))
        if self.hub.channels.is_subscribed(conn, channel):
            raise CommandError("already_subscribed", f"already subscribed to {channel!r}")
        if conn.channels is not None and len(conn.channels) >= MAX_SUBSCRIPTIONS:
            raise CommandError("too_many_channels",
                               f"a client may subscribe to at most {MAX_SUBSCRIPTIONS} channels")

        def go() -> None:
            # Checked again: an application's answer comes later, maybe after another
            # subscribe to the same channel was allowed.
            if self.hub.channels.is_subscribed(conn, channel):
                raise CommandError("already_subscribed", f"already subscribed to {channel!r}")
            recoverable = self.hub.channels.policy(channel).size > 0

            def ready(result: SubscribeResult) -> None:
                _reply(conn, request_id, {**result.as_dict(), "recoverable": recoverable})

            try:
                outcome = self.hub.channels.subscribe(conn, channel, ENVELOPE, since, ready=ready)
            except ChannelLimit as exc:
                raise CommandError("channel_limit", str(exc)) from None
            if not isinstance(outcome, SubscribeResult):
                _track(self.hub.loop, outcome, conn, request_id)

        self._check(conn, "subscribe", channel, go, request_id)

    def _op_unsubscribe(self, conn: Connection, cmd: dict, request_id: Any) -> None:
        channel = self._channel(cmd)
        _reply(conn, request_id, {"unsubscribed": self.hub.channels.unsubscribe(conn, channel)})

    def _op_publish(self, conn: Connection, cmd: dict, request_id: Any) -> None:
        channel = self._channel(cmd)
        if "data" not in cmd:
            raise CommandError("bad_request", "'data' is required")
        ns = self.hub.config.namespace(channel)
        # Encoded once, here: the bytes are what history keeps and every envelope
        # carries. Values nested too deeply to be encoded are refused.
        data = encode_data(cmd["data"])
        size = len(data.raw)
        if size > ns.max_data_size:
            raise CommandError("too_large", f"'data' is {size} bytes; the limit is {ns.max_data_size}")

        def go() -> None:
            info = {"conn": conn.id, "user": conn.user}
            try:
                pub = self.hub.channels.publish(channel, data, info)
            except ChannelLimit as exc:
                raise CommandError("channel_limit", str(exc)) from None
            if hasattr(pub, "offset"):
                _reply(conn, request_id, {"channel": channel, "offset": pub.offset, "epoch": pub.epoch})
            else:
                _track(self.hub.loop, pub, conn, request_id, publish=True)

        self._check(conn, "publish", channel, go, request_id)

    def _subscribed_ns(self, conn: Connection, channel: str):
        if not self.hub.channels.is_subscribed(conn, channel):
            raise CommandError("not_subscribed", f"subscribe to {channel!r} first")
        return self.hub.config.namespace(channel)

    def _op_presence(self, conn: Connection, cmd: dict, request_id: Any) -> None:
        channel = self._channel(cmd)
        ns = self._subscribed_ns(conn, channel)
        if not (ns.presence and ns.client_presence):
            raise CommandError("not_enabled", f"presence is not available to clients on {channel!r}")
        clients = self.hub.channels.broker.presence(channel)
        if hasattr(clients, "items"):
            _reply(conn, request_id, {"channel": channel, "clients": clients})
        else:
            _track(self.hub.loop, clients, conn, request_id,
                   wrap=lambda c: {"channel": channel, "clients": c})

    def _op_history(self, conn: Connection, cmd: dict, request_id: Any) -> None:
        channel = self._channel(cmd)
        ns = self._subscribed_ns(conn, channel)
        if not (ns.history_size and ns.client_history):
            raise CommandError("not_enabled", f"history is not available to clients on {channel!r}")
        limit = cmd.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise CommandError("bad_request", "'limit' must be a non-negative integer")
        since = parse_position(cmd.get("since"))
        channels = self.hub.channels
        result = channels.broker.history(channel, channels.policy(channel), since, limit)

        def wrap(r) -> dict:
            return {"channel": channel, "offset": r.position.offset, "epoch": r.position.epoch,
                    "recovered": r.recovered,
                    "publications": [{"offset": p.offset, "data": p.data, "time": p.time}
                                     for p in r.publications]}

        if hasattr(result, "publications"):
            _reply(conn, request_id, wrap(result))
        else:
            _track(self.hub.loop, result, conn, request_id, wrap=wrap)

    def _op_message(self, conn: Connection, cmd: dict, request_id: Any) -> None:
        if "data" not in cmd:
            raise CommandError("bad_request", "'data' is required")
        json_size(cmd["data"])  # refuses what could not be encoded into the event
        event = self.hub.events.emit(conn, "message", data=cmd["data"], user=conn.user)
        if event is None:
            raise CommandError("not_enabled", "no application is listening on this gateway")
        _reply(conn, request_id, {"event": event["id"]})

    def _op_ping(self, conn: Connection, cmd: dict, request_id: Any) -> None:
        _reply(conn, request_id, {"pong": True})

    # -- commands from the application --------------------------------------------------

    def send_direct(self, conn: Connection, data: Any) -> None:
        conn.send(OutMessage(dumps_str({"type": "message", "data": data})))


def _track(loop, awaitable, conn: Connection, request_id: Any, *, publish: bool = False,
           wrap=None) -> None:
    """Reply once a broker operation completes."""

    async def run() -> None:
        try:
            value = await awaitable
        except CommandError as exc:
            _reply(conn, request_id, error=exc)
            return
        except BrokerUnavailable as exc:
            log.warning("broker operation failed: the broker is unavailable (%s)", exc)
            _reply(conn, request_id, error=CommandError("unavailable", "the broker is unavailable"))
            return
        except Exception:
            log.exception("broker operation failed")
            _reply(conn, request_id, error=CommandError("unavailable", "the broker is unavailable"))
            return
        if wrap is not None:
            _reply(conn, request_id, wrap(value))
        elif publish:
            _reply(conn, request_id, {"channel": value.channel, "offset": value.offset, "epoch": value.epoch})

    loop.create_task(run())
