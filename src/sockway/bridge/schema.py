"""The application's commands, declared once.

Each command is a msgspec ``Struct``: its fields, their types, their limits and what
they mean. The one declaration does both jobs: :func:`validate` checks every command
against it, whichever way the command came (HTTP API, ZeroMQ, webhook answers, the
broker's command input: bridge.commands), and :func:`openapi_components` describes it in
the HTTP API's OpenAPI document (bridge.http_api) through msgspec's JSON Schema
generation (2020-12, the dialect of OpenAPI 3.1). What the document says is what is
checked: unknown fields are refused (``additionalProperties: false``), types are exact
(``"3"`` is not an integer, ``true`` is not a number).

A few rules need more than a type: a channel name is matched whole against
:data:`sockway.hub.channels.CHANNEL_RE` (its own code, ``bad_channel``), a close code
skips 1002-2999 and a close reason is counted in UTF-8 bytes. Each is written here once,
with its JSON Schema spelling beside it.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any

import msgspec

from sockway import closecodes
from sockway.brokers.base import StreamPosition
from sockway.hub.channels import CHANNEL_CHARS, valid_channel

__all__ = ["COMMANDS", "CommandInvalid", "openapi_components", "validate"]

CLOSE_CODES = ((1000, 1001), (3000, 4999))
"""Close codes an application may use: 1000 and 1001 (RFC 6455 section 7.4.1), and the
ranges for libraries and applications (3000-4999). Not 1002-1015 (protocol errors,
reserved), not 2000-2999 (reserved for extensions)."""
MAX_REASON = 123
"""Bytes of UTF-8 in a close reason (RFC 6455 section 5.5: a control frame carries at
most 125 bytes, two of them the code)."""

CHANNEL_DESCRIPTION = "1-255 characters of letters, digits and _.:@/=+-"

Channel = Annotated[str, msgspec.Meta(
    # ECMA-262 (JSON Schema) "$" is the end of the text; Python's "$" also matches
    # before a final newline, so the check itself is valid_channel's fullmatch.
    extra_json_schema={"pattern": f"^[{CHANNEL_CHARS}]{{1,255}}$"},
    description=f"a channel name: {CHANNEL_DESCRIPTION}; the part before ':' is its namespace",
)]
Conn = Annotated[str, msgspec.Meta(min_length=1, description="a connection id (from an event)")]
Data = Annotated[Any, msgspec.Meta(description="any JSON value, nested at most 128 levels deep")]
CloseCode = Annotated[int, msgspec.Meta(
    ge=1000, le=4999,
    extra_json_schema={"anyOf": [{"enum": list(CLOSE_CODES[0])},
                                 {"minimum": CLOSE_CODES[1][0], "maximum": CLOSE_CODES[1][1]}]},
    description="1000, 1001 or 3000-4999",
)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON,
                                     description=f"a string of at most {MAX_REASON} bytes of UTF-8")]


class Position(msgspec.Struct, forbid_unknown_fields=True):
    """A position in a channel's stream: what the client last saw."""

    offset: int
    epoch: str


Since = Annotated[Position | None, msgspec.Meta(
    description='{"offset": <integer>, "epoch": <string>}: the position the client last saw')]


class Command(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    """A command: a JSON object whose ``op`` names it."""


class Publish(Command, tag="publish"):
    """Publish to a channel: every subscriber on every node receives it."""

    channel: Channel
    data: Data


class Broadcast(Command, tag="broadcast"):
    """Publish to every client of a broadcast endpoint."""

    endpoint: Annotated[str, msgspec.Meta(pattern="^/", description="a broadcast endpoint's prefix, such as /chat")]
    data: Data


class Send(Command, tag="send"):
    """Send to one connection."""

    conn: Conn
    data: Data


class Subscribe(Command, tag="subscribe"):
    """Subscribe a connection to a channel (missed publications since 'since' first)."""

    conn: Conn
    channel: Channel
    since: Since = None


class Unsubscribe(Command, tag="unsubscribe"):
    """Unsubscribe a connection from a channel."""

    conn: Conn
    channel: Channel


class Close(Command, tag="close"):
    """Close a connection."""

    conn: Conn
    code: CloseCode = closecodes.GO_AWAY
    reason: Reason = ""


class Presence(Command, tag="presence"):
    """Who is in a channel (presence must be on)."""

    channel: Channel


class History(Command, tag="history"):
    """A channel's kept publications."""

    channel: Channel
    since: Since = None
    limit: Annotated[Annotated[int, msgspec.Meta(ge=0)] | None, msgspec.Meta(
        description="a non-negative integer: the most publications to return")] = None


class Accept(Command, tag="accept"):
    """Accept a connection held by an app_accept endpoint."""

    conn: Conn
    user: Annotated[str | None, msgspec.Meta(description="the user id the connection gets")] = None
    info: Annotated[dict[str, Any] | None, msgspec.Meta(description="an object shown in presence")] = None


class Reply(Command, tag="reply"):
    """Answer an application-decided subscribe or publish event."""

    event: Annotated[str, msgspec.Meta(min_length=1, description="the id of the event answered")]
    allow: Annotated[bool, msgspec.Meta(description="true or false")]
    reason: Annotated[str, msgspec.Meta(description="why, when refused")] = ""


class Stats(Command, tag="stats"):
    """Counters of this node."""


COMMANDS: dict[str, type[Command]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (Publish, Broadcast, Send, Subscribe, Unsubscribe, Close, Presence, History, Accept, Reply, Stats)
}
"""op -> its declaration."""


class CommandInvalid(ValueError):
    """A command does not fit its declaration: ``code`` (bad_request, bad_channel) and a
    message saying which field and what was expected."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _descriptions(cls: type[msgspec.Struct]) -> dict[str, str]:
    out = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, msgspec.Meta) and meta.description:
                out[name] = meta.description
    return out


_DESCRIPTIONS = {op: _descriptions(cls) for op, cls in COMMANDS.items()}
# msgspec's messages: "<what> - at `$.field...`", "Object missing required field `x`",
# "Object contains unknown field `x`".
_AT = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.S)
_NAMED = re.compile(r"Object (?P<kind>missing required|contains unknown) field `(?P<field>[^`]*)`")


def _explain(op: str, error: msgspec.ValidationError) -> str:
    """msgspec's message, said in terms of the command's fields."""
    match = _AT.fullmatch(str(error))
    assert match is not None  # the pattern matches any text
    what, path = match.group("what", "path")
    descriptions = _DESCRIPTIONS[op]
    field = re.match(r"\.(\w+)", path or "")
    if field is not None:
        name = field.group(1)
        expected = descriptions.get(name)
        return f"'{name}' must be {expected} ({what})" if expected else f"'{name}': {what}"
    named = _NAMED.fullmatch(what)
    if named is not None:
        name = named.group("field")
        if named.group("kind") == "missing required":
            return f"'{name}' is required ({descriptions.get(name, 'see /api/openapi.json')})"
        fields = [f for f in COMMANDS[op].__struct_fields__]
        return f"unknown field '{name}': {op} takes " + (", ".join(fields) if fields else "no other field")
    return what


def validate(cmd: dict, op: str) -> dict:
    """``cmd`` (a JSON object whose op is ``op``, one of :data:`COMMANDS`) checked
    against its declaration, as a dict of every field (absent ones with their default;
    ``since`` as a :class:`StreamPosition` or None). Raises :class:`CommandInvalid`."""
    try:
        parsed = msgspec.convert(cmd, COMMANDS[op])
    except msgspec.ValidationError as exc:
        raise CommandInvalid("bad_request", _explain(op, exc)) from None
    out: dict[str, Any] = {"op": op}
    for name in parsed.__struct_fields__:
        out[name] = getattr(parsed, name)
    if "channel" in out and not valid_channel(out["channel"]):
        raise CommandInvalid("bad_channel", f"channel names are {CHANNEL_DESCRIPTION}")
    since = out.get("since")
    if since is not None:
        out["since"] = StreamPosition(since.offset, since.epoch)
    if op == "close":
        code = out["code"]
        if not (code in CLOSE_CODES[0] or CLOSE_CODES[1][0] <= code <= CLOSE_CODES[1][1]):
            raise CommandInvalid("bad_request", "'code' must be 1000, 1001 or 3000-4999")
        try:
            size = len(out["reason"].encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates (see sockjs.escaping): not UTF-8
            size = MAX_REASON + 1
        if size > MAX_REASON:
            raise CommandInvalid("bad_request", f"'reason' must be a string of at most {MAX_REASON} bytes of UTF-8")
    return out


def openapi_components() -> tuple[dict[str, dict], dict]:
    """The JSON Schema of each command (by op; ``op`` required, as in
    ``/api/commands``), and the component schemas they refer to, with references in
    OpenAPI's form (``#/components/schemas/<name>``)."""
    ops = list(COMMANDS)
    _, components = msgspec.json.schema_components(
        [COMMANDS[op] for op in ops], ref_template="#/components/schemas/{name}")
    return {op: components[COMMANDS[op].__name__] for op in ops}, components
