"""Commands from the application (DESIGN.md contract 4).

One JSON object per command, the same whichever way it arrives (HTTP API, ZeroMQ,
webhook response)::

    {"op": "publish", "channel": "news", "data": {...}}
    {"op": "send", "conn": "<id>", "data": "hello"}
    {"op": "subscribe", "conn": "<id>", "channel": "news", "since": {"offset": 4, "epoch": "..."}}
    {"op": "unsubscribe", "conn": "<id>", "channel": "news"}
    {"op": "close", "conn": "<id>", "code": 4000, "reason": "bye"}
    {"op": "presence", "channel": "news"}
    {"op": "history", "channel": "news", "limit": 10, "since": {...}}
    {"op": "broadcast", "endpoint": "/chat", "data": "hello"}
    {"op": "accept", "conn": "<id>", "user": "alice"}
    {"op": "reply", "event": "<event id>", "allow": true}
    {"op": "stats"}

Every command is checked before it runs; a bad one raises :class:`CommandError` with a
code, a message that says what is wrong, and the HTTP status the API answers with.
Nothing a command carries can crash the gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sockway import closecodes
from sockway.brokers.base import StreamPosition, resolve
from sockway.hub.channels import valid_channel
from sockway.jsonutil import dumps

if TYPE_CHECKING:
    from sockway.hub.hub import Hub

__all__ = ["OPS", "CommandError", "Commands", "parse_position"]

MAX_DATA = 1 << 20


class CommandError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def _require(cmd: dict, field: str, kind: type | tuple, what: str) -> Any:
    if field not in cmd:
        raise CommandError("bad_request", f"'{field}' is required ({what})")
    value = cmd[field]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CommandError("bad_request", f"'{field}' must be {what}")
    return value


def _channel(cmd: dict) -> str:
    channel = _require(cmd, "channel", str, "a channel name")
    if not valid_channel(channel):
        raise CommandError("bad_channel",
                           "channel names are 1-255 characters of letters, digits and _.:@/=+-")
    return channel


def parse_position(value: Any) -> StreamPosition | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or not isinstance(value.get("offset"), int)
            or isinstance(value.get("offset"), bool) or not isinstance(value.get("epoch"), str)):
        raise CommandError("bad_request", "'since' must be {\"offset\": <int>, \"epoch\": <string>}")
    return StreamPosition(value["offset"], value["epoch"])


def _data(cmd: dict, limit: int = MAX_DATA) -> Any:
    if "data" not in cmd:
        raise CommandError("bad_request", "'data' is required (any JSON value)")
    data = cmd["data"]
    size = len(data.encode()) if isinstance(data, str) else len(dumps(data))
    if size > limit:
        raise CommandError("too_large", f"'data' is {size} bytes; the limit is {limit}", 413)
    return data


OPS = ("publish", "broadcast", "send", "subscribe", "unsubscribe", "close", "presence",
       "history", "accept", "reply", "stats")


class Commands:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.executed = 0
        self.failed = 0

    def _connection(self, cmd: dict):
        conn_id = _require(cmd, "conn", str, "a connection id")
        conn = self.hub.by_id.get(conn_id)
        if conn is None:
            raise CommandError("not_found", f"no open connection {conn_id!r} on this node", 404)
        return conn

    async def execute(self, cmd: Any) -> dict:
        """Run one command; returns its result (a JSON object)."""
        try:
            result = await self._execute(cmd)
        except CommandError:
            self.failed += 1
            raise
        self.executed += 1
        return result

    async def execute_many(self, commands: list) -> list[dict]:
        """Run commands in order; each gets ``{"result": ...}`` or ``{"error": ...}``."""
        out = []
        for cmd in commands:
            try:
                out.append({"result": await self.execute(cmd)})
            except CommandError as exc:
                out.append({"error": exc.as_dict()})
        return out

    async def _execute(self, cmd: Any) -> dict:
        if not isinstance(cmd, dict):
            raise CommandError("bad_request", "a command is a JSON object with an 'op' field")
        op = cmd.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) and op in OPS else None
        if handler is None:
            raise CommandError("unknown_op", f"unknown op {op!r}; known: {', '.join(OPS)}")
        return await handler(cmd)

    async def _op_publish(self, cmd: dict) -> dict:
        channel = _channel(cmd)
        ns = self.hub.config.namespace(channel)
        data = _data(cmd, max(ns.max_data_size, MAX_DATA))
        pub = await resolve(self.hub.channels.publish(channel, data))
        return {"channel": channel, "offset": pub.offset, "epoch": pub.epoch}

    async def _op_broadcast(self, cmd: dict) -> dict:
        prefix = _require(cmd, "endpoint", str, "an endpoint prefix such as /chat")
        endpoint = self.hub.endpoints.get(prefix)
        if endpoint is None or not hasattr(endpoint.mode, "publish"):
            raise CommandError("not_found", f"no broadcast endpoint {prefix!r}", 404)
        data = _data(cmd)
        pub = await resolve(endpoint.mode.publish(data))
        return {"endpoint": prefix, "offset": pub.offset, "epoch": pub.epoch}

    async def _op_send(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        data = _data(cmd)
        conn.endpoint.mode.send_direct(conn, data)
        return {"conn": conn.id}

    async def _op_subscribe(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        channel = _channel(cmd)
        since = parse_position(cmd.get("since"))
        result = await resolve(conn.endpoint.mode.server_subscribe(conn, channel, since))
        return result

    async def _op_unsubscribe(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        channel = _channel(cmd)
        return {"unsubscribed": conn.endpoint.mode.server_unsubscribe(conn, channel)}

    async def _op_close(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        code = cmd.get("code", closecodes.GO_AWAY)
        reason = cmd.get("reason", "")
        if not isinstance(code, int) or isinstance(code, bool) or not (
            code in (1000, 1001) or 3000 <= code <= 4999
        ):
            raise CommandError("bad_request", "'code' must be 1000, 1001 or 3000-4999")
        if not isinstance(reason, str) or len(reason.encode()) > 123:
            raise CommandError("bad_request", "'reason' must be a string of at most 123 bytes")
        conn.close(code, reason)
        return {"conn": conn.id, "code": code}

    async def _op_presence(self, cmd: dict) -> dict:
        channel = _channel(cmd)
        if not self.hub.config.namespace(channel).presence:
            raise CommandError("not_enabled", f"presence is off for channel {channel!r}; "
                               "set presence = true in its [[namespace]]", 409)
        clients = await resolve(self.hub.channels.broker.presence(channel))
        return {"channel": channel, "clients": clients}

    async def _op_history(self, cmd: dict) -> dict:
        channel = _channel(cmd)
        since = parse_position(cmd.get("since"))
        limit = cmd.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise CommandError("bad_request", "'limit' must be a non-negative integer")
        channels = self.hub.channels
        result = await resolve(channels.broker.history(channel, channels.policy(channel), since, limit))
        return {
            "channel": channel,
            "offset": result.position.offset,
            "epoch": result.position.epoch,
            "recovered": result.recovered,
            "publications": [p.as_dict() for p in result.publications],
        }

    async def _op_accept(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        user = cmd.get("user")
        if user is not None and not isinstance(user, str):
            raise CommandError("bad_request", "'user' must be a string")
        accept = getattr(conn.endpoint.mode, "accept", None)
        if accept is None:
            raise CommandError("bad_request", f"endpoint {conn.endpoint.prefix} does not wait for accept")
        accept(conn, user, cmd.get("info"))
        return {"conn": conn.id}

    async def _op_reply(self, cmd: dict) -> dict:
        event_id = _require(cmd, "event", str, "the id of the event answered")
        allow = _require(cmd, "allow", bool, "true or false")
        reason = cmd.get("reason", "")
        if not isinstance(reason, str):
            raise CommandError("bad_request", "'reason' must be a string")
        if not self.hub.decisions.resolve(event_id, allow, reason):
            raise CommandError("not_found", f"no pending decision for event {event_id!r}", 404)
        return {"event": event_id}

    async def _op_stats(self, cmd: dict) -> dict:
        return self.hub.stats_dict()
