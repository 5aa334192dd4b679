"""Commands from the application (docs/bridge.md, "Commands").

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

Every command is checked before it runs, against its declaration in
:mod:`sockway.bridge.schema` (the same one the HTTP API's OpenAPI document is made
from); a bad one raises :class:`CommandError` with a code, a message that says which
field is wrong and what was expected, and the HTTP status the API answers with.
Nothing a command carries can crash the gateway: ``data`` (and ``info``) nested deeper
than :data:`MAX_DEPTH` levels is refused (encoding it would exhaust the stack), a string
with lone surrogates (which SockJS clients can produce, see sockjs.escaping) is measured
as such rather than failing, and a close ``reason`` must be valid UTF-8 (RFC 6455
section 5.5.1).

A command for a connection on another node (its id starts with that node's id, see
hub.connection) — ``send``, ``subscribe``, ``unsubscribe``, ``close``, ``accept`` — and
a ``reply`` to an event emitted by another node (event ids start with the node's id) are
forwarded through the broker to that node, which runs it and sends back its answer
(:meth:`Broker.forward`). With the memory broker there is no other node: such a
connection is not found, as before. An unreachable node: ``not_found``; no answer within
``FORWARD_TIMEOUT``: ``timeout`` (504, the command may still have run); the broker
down: ``unavailable`` (503).
"""

from __future__ import annotations

import array
import itertools
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sockway.bridge.schema import CommandInvalid, validate
from sockway.brokers.base import BrokerUnavailable, ChannelLimit, StreamPosition, resolve
from sockway.hub.connection import node_of
from sockway.jsonutil import Json, dumps

if TYPE_CHECKING:
    from sockway.hub.hub import Hub

__all__ = ["MAX_DEPTH", "OPS", "CommandError", "Commands", "encode_data", "json_size", "message_data",
           "parse_position"]

MAX_DATA = 1 << 20
MAX_DEPTH = 128
"""Deepest nesting of arrays and objects accepted in published or sent data. Deeper
values cannot always be encoded back (the JSON encoders recurse), so they are refused
when they come in rather than failing on their way out."""


class CommandError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def parse_position(value: Any) -> StreamPosition | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or not isinstance(value.get("offset"), int)
            or isinstance(value.get("offset"), bool) or not isinstance(value.get("epoch"), str)):
        raise CommandError("bad_request", "'since' must be {\"offset\": <int>, \"epoch\": <string>}")
    return StreamPosition(value["offset"], value["epoch"])


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_DEPTH_STEP = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _nesting(encoded: bytes) -> int:
    """How deep arrays and objects nest in the JSON text ``encoded`` (as
    :func:`~sockway.jsonutil.dumps` writes it): the highest running sum of +1 for each
    opening and -1 for each closing bracket outside strings, computed in C (regular
    expression, translate, accumulate) in one pass. Written by hand: no JSON library
    reports depth without building the value, and walking the built value costs a
    Python step per element (30 ms for 64 KiB of ``[{},{},...]``; this takes 1 ms)."""
    steps = array.array("b", _STRING.sub(b"", encoded).translate(_DEPTH_STEP, _NOT_BRACKET))
    return max(itertools.accumulate(steps), default=0)


def encode_data(value: Any, what: str = "'data'") -> Json:
    """``value`` as its JSON encoding (what history keeps and envelopes carry), refusing
    values nested deeper than :data:`MAX_DEPTH`."""
    if not isinstance(value, (list, dict)):
        return Json.encode(value)
    too_deep = CommandError("bad_request", f"{what} is nested more than {MAX_DEPTH} levels deep")
    try:
        encoded = dumps(value)
    except RecursionError:
        raise too_deep from None
    # Fewer brackets than the limit in the whole text: no need to look closer.
    if encoded.count(b"[") + encoded.count(b"{") > MAX_DEPTH and _nesting(encoded) > MAX_DEPTH:
        raise too_deep
    return Json(encoded)


def json_size(value: Any, what: str = "'data'") -> int:
    """Bytes of ``value`` as JSON (a string: its UTF-8 length), refusing values nested
    deeper than :data:`MAX_DEPTH`."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(encode_data(value, what).raw)


def _data(cmd: dict, limit: int = MAX_DATA) -> Any:
    """The command's ``data``, checked: deep nesting and size (a string: its UTF-8
    length; anything else: its JSON's)."""
    if "data" not in cmd:
        raise CommandError("bad_request", "'data' is required (any JSON value)")
    data = cmd["data"]
    size = json_size(data)
    if size > limit:
        raise CommandError("too_large", f"'data' is {size} bytes; the limit is {limit}", 413)
    return data


def message_data(raw: bytes) -> str | bytes:
    """A message taken byte for byte (a one-frame ZeroMQ message, an ``/api/broadcast``
    body sent with ``?endpoint=``), as the ``data`` of a publish or broadcast: its text
    when it is UTF-8, which recipients of the bare data (broadcast endpoints) receive as
    a text message of exactly these bytes; otherwise the bytes themselves, published as
    binary data like a raw WebSocket client's binary message (a binary frame to raw
    WebSocket recipients; SockJS and the channels protocol carry text only: UTF-8 with
    U+FFFD for each invalid sequence)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _published(cmd: dict, limit: int = MAX_DATA) -> Json | bytes:
    """:func:`_data` encoded once, as history keeps it and envelopes carry it; binary
    data (:func:`message_data`, never from JSON) as it is."""
    if "data" not in cmd:
        raise CommandError("bad_request", "'data' is required (any JSON value)")
    value = cmd["data"]
    data: Json | bytes
    if isinstance(value, bytes):
        data, size = value, len(value)
    else:
        data = encode_data(value)
        size = len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) else len(data.raw)
    if size > limit:
        raise CommandError("too_large", f"'data' is {size} bytes; the limit is {limit}", 413)
    return data


FORWARD_TIMEOUT = 5.0
"""Seconds a node waits for another node's answer to a forwarded command."""
CONNECTION_OPS = frozenset({"send", "subscribe", "unsubscribe", "close", "accept"})

OPS = ("publish", "broadcast", "send", "subscribe", "unsubscribe", "close", "presence",
       "history", "accept", "reply", "stats")


class Commands:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.executed = 0
        self.failed = 0
        self.observe: Callable[[float], None] | None = None
        """Called with each command's duration (the metrics histogram)."""
        self.forwarded = 0
        hub.broker.node_id = hub.node_id
        hub.broker.on_command = self.run_remote

    def _connection(self, cmd: dict):
        conn_id = cmd["conn"]
        conn = self.hub.by_id.get(conn_id)
        if conn is None:
            raise CommandError("not_found", f"no open connection {conn_id!r} on this node", 404)
        return conn

    async def execute(self, cmd: Any, *, forwarded: bool = False) -> dict:
        """Run one command; returns its result (a JSON object). ``forwarded``: it came
        from another node, so it runs here and is never forwarded again."""
        started = time.perf_counter()
        try:
            try:
                result = await self._execute(cmd, forwarded)
            except BrokerUnavailable as exc:
                raise CommandError("unavailable", f"the broker is unavailable: {exc}", 503) from None
            except ChannelLimit as exc:
                raise CommandError("channel_limit", str(exc), 503) from None
        except CommandError:
            self.failed += 1
            raise
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - started)
        self.executed += 1
        return result

    async def run_remote(self, cmd: Any) -> dict:
        """Run a command that came through the broker (forwarded by another node, or from
        the engine's command input); the answer is a JSON object either way."""
        forwarded = isinstance(cmd, dict) and bool(cmd.pop("forwarded", False))
        try:
            return {"result": await self.execute(cmd, forwarded=forwarded)}
        except CommandError as exc:
            return {"error": {**exc.as_dict(), "status": exc.status}}
        except Exception as exc:  # a bug must not kill the broker's reader
            return {"error": {"code": "internal", "message": repr(exc), "status": 500}}

    def _home(self, cmd: dict, op: str) -> str | None:
        """The other node this command must run on, if any."""
        if op in CONNECTION_OPS:
            conn_id = cmd.get("conn")
            if not isinstance(conn_id, str) or conn_id in self.hub.by_id:
                return None
            node = node_of(conn_id)
        elif op == "reply":
            event_id = cmd.get("event")
            if not isinstance(event_id, str) or event_id in self.hub.decisions.pending:
                return None
            node = event_id.partition("-")[0]
        else:
            return None
        return node if node and node != self.hub.node_id else None

    async def _forward(self, node: str, cmd: dict) -> dict | None:
        pending = self.hub.broker.forward(node, {**cmd, "forwarded": True}, FORWARD_TIMEOUT)
        if pending is None:
            return None
        what = f"connection {cmd['conn']!r}" if "conn" in cmd else f"event {cmd.get('event')!r}"
        try:
            answer = await pending
        except LookupError:
            raise CommandError("not_found", f"no open {what}: its node {node} is not reachable",
                               404) from None
        except TimeoutError:
            raise CommandError("timeout", f"node {node} did not answer within {FORWARD_TIMEOUT}s "
                               f"(the command for {what} may still have run)", 504) from None
        self.forwarded += 1
        if "error" in answer:
            error = answer["error"]
            raise CommandError(str(error.get("code", "error")), str(error.get("message", "")),
                               int(error.get("status", 400)))
        return answer.get("result", {})

    async def execute_many(self, commands: list) -> list[dict]:
        """Run commands in order; each gets ``{"result": ...}`` or ``{"error": ...}``."""
        out = []
        for cmd in commands:
            try:
                out.append({"result": await self.execute(cmd)})
            except CommandError as exc:
                out.append({"error": exc.as_dict()})
        return out

    async def _execute(self, cmd: Any, forwarded: bool = False) -> dict:
        if not isinstance(cmd, dict):
            raise CommandError("bad_request", "a command is a JSON object with an 'op' field")
        op = cmd.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) and op in OPS else None
        if handler is None:
            raise CommandError("unknown_op", f"unknown op {op!r}; known: {', '.join(OPS)}")
        try:
            checked = validate(cmd, op)
        except CommandInvalid as exc:
            raise CommandError(exc.code, exc.message) from None
        if not forwarded:
            node = self._home(checked, op)
            if node is not None:
                result = await self._forward(node, cmd)
                if result is not None:
                    return result
        return await handler(checked)

    # Each handler gets its command checked (bridge.schema.validate): every field there,
    # absent ones with their default, ``since`` as a StreamPosition or None.

    async def _op_publish(self, cmd: dict) -> dict:
        channel = cmd["channel"]
        ns = self.hub.config.namespace(channel)
        data = _published(cmd, max(ns.max_data_size, MAX_DATA))
        pub = await resolve(self.hub.channels.publish(channel, data))
        return {"channel": channel, "offset": pub.offset, "epoch": pub.epoch}

    async def _op_broadcast(self, cmd: dict) -> dict:
        prefix = cmd["endpoint"]
        endpoint = self.hub.endpoints.get(prefix)
        if endpoint is None or not hasattr(endpoint.mode, "publish"):
            raise CommandError("not_found", f"no broadcast endpoint {prefix!r}", 404)
        data = _published(cmd)
        pub = await resolve(endpoint.mode.publish(data))
        return {"endpoint": prefix, "offset": pub.offset, "epoch": pub.epoch}

    async def _op_send(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        data = _data(cmd)
        conn.endpoint.mode.send_direct(conn, data)
        return {"conn": conn.id}

    async def _op_subscribe(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        result = await resolve(conn.endpoint.mode.server_subscribe(conn, cmd["channel"], cmd["since"]))
        return result

    async def _op_unsubscribe(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        return {"unsubscribed": conn.endpoint.mode.server_unsubscribe(conn, cmd["channel"])}

    async def _op_close(self, cmd: dict) -> dict:
        conn = self._connection(cmd)
        code = cmd["code"]
        conn.close(code, cmd["reason"])
        return {"conn": conn.id, "code": code}

    async def _op_presence(self, cmd: dict) -> dict:
        channel = cmd["channel"]
        if not self.hub.config.namespace(channel).presence:
            raise CommandError("not_enabled", f"presence is off for channel {channel!r}; "
                               "set presence = true in its [[namespace]]", 409)
        clients = await resolve(self.hub.channels.broker.presence(channel))
        return {"channel": channel, "clients": clients}

    async def _op_history(self, cmd: dict) -> dict:
        channel, since, limit = cmd["channel"], cmd["since"], cmd["limit"]
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
        user, info = cmd["user"], cmd["info"]
        if info is not None:
            json_size(info, "'info'")
        accept = getattr(conn.endpoint.mode, "accept", None)
        if accept is None:
            raise CommandError("bad_request", f"endpoint {conn.endpoint.prefix} does not wait for accept")
        accept(conn, user, info)
        return {"conn": conn.id}

    async def _op_reply(self, cmd: dict) -> dict:
        event_id, allow, reason = cmd["event"], cmd["allow"], cmd["reason"]
        if not self.hub.decisions.resolve(event_id, allow, reason):
            raise CommandError("not_found", f"no pending decision for event {event_id!r}", 404)
        return {"event": event_id}

    async def _op_stats(self, cmd: dict) -> dict:
        return self.hub.stats_dict()
