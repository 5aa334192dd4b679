"""What the network engines (Redis, NATS) put on the wire and in their stores.

A publication is one JSON object::

    {"o": <offset>, "e": "<epoch>", "t": <unix time>, "d": <data>, "i": {<info>}}

``"b": "<base64>"`` replaces ``"d"`` when the data is binary (a raw WebSocket client's
binary message on a broadcast endpoint), so that it arrives binary on every node.
``"i"`` is present only when a client published. The body without ``"o"`` and ``"e"``
(:func:`publication_body`) is built by the publishing node; the engine's atomic step
prepends offset and epoch once it has assigned them (:func:`with_position` does the
same in Python), so the bytes delivered live and the bytes kept in history are the same.

The NATS engine also stores and sends *batches*: several publications of one channel
with consecutive offsets in one message (:func:`batch_message`)::

    {"o": <last offset>, "e": "<epoch>", "m": 2, "f": <first offset>, "p": [{<body>}, ...]}

and *markers*, a position without a publication: ``{"o": <offset>, "e": "<epoch>",
"m": 1}``. In every kind ``"o"`` and ``"e"`` are the channel's position after the
message, and ``"m"`` is absent only from a single publication, so a reader written
before batches existed takes a batch for a marker: it keeps counting offsets right and
skips the batch's publications. :func:`publications_in` reads all three kinds.

Channel names (``[A-Za-z0-9_.:@/=+-]``, see hub.channels) are made into NATS subject
tokens and KV keys by :func:`token`: letters, digits, ``_``, ``-`` and ``/`` stay,
every other character becomes ``=XX`` (its hex code). The mapping is one-to-one.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from sockway.brokers.base import Publication
from sockway.jsonutil import Json, dumps, loads

__all__ = ["BATCH", "MARKER", "batch_message", "decode_json", "decode_publication", "marker_message",
           "publication_at", "publication_body", "publication_from", "publications_in", "token", "untoken",
           "with_position"]

MARKER = 1
"""``"m"`` of a message that only records a position (offset, epoch)."""
BATCH = 2
"""``"m"`` of a message carrying several publications (:func:`batch_message`)."""


def publication_body(data: Any, info: dict | None, when: float) -> bytes:
    """``"t":...,"d":...[,"i":...]`` — the inside of the object, without braces. A
    :class:`~sockway.jsonutil.Json` is written as it is."""
    fields: dict[str, Any] = {"t": when}
    if isinstance(data, (bytes, bytearray, memoryview)):
        fields["b"] = base64.b64encode(bytes(data)).decode("ascii")
    else:
        fields["d"] = data
    if info:
        fields["i"] = info
    return dumps(fields)[1:-1]


def with_position(offset: int, epoch: str, body: bytes) -> bytes:
    return b'{"o":%d,"e":"%s",%s}' % (offset, epoch.encode("ascii"), body)


def marker_message(offset: int, epoch: str) -> bytes:
    return b'{"o":%d,"e":"%s","m":1}' % (offset, epoch.encode("ascii"))


def batch_message(first: int, epoch: str, bodies: list[bytes]) -> bytes:
    """Publications ``first``, ``first + 1``, ... of one epoch in one message, from their
    :func:`publication_body` s (the bodies are written as they are: no re-encoding)."""
    last = first + len(bodies) - 1
    return b'{"o":%d,"e":"%s","m":2,"f":%d,"p":[{%s}]}' % (last, epoch.encode("ascii"), first, b"},{".join(bodies))


def publications_in(channel: str, obj: dict) -> list[Publication]:
    """The publications a decoded message holds, each with its own offset: one (a single
    publication), several (a batch), none (a marker, or a kind this version does not
    know)."""
    kind = obj.get("m")
    if kind is None:
        return [publication_from(channel, obj)]
    if kind != BATCH:
        return []
    first = int(obj["f"])
    epoch = str(obj["e"])
    bodies = obj["p"]
    if first + len(bodies) - 1 != int(obj["o"]):
        raise ValueError(f"batch of {len(bodies)} publications from offset {first} ends at {obj['o']}")
    return [publication_at(channel, first + i, epoch, body) for i, body in enumerate(bodies)]


def decode_json(raw: bytes | str) -> Any:
    if isinstance(raw, bytes):
        try:
            return loads(raw)
        except ValueError:
            # Lone surrogates are encoded with "surrogatepass" by jsonutil.dumps.
            return loads(raw.decode("utf-8", "surrogatepass"))
    return loads(raw)


def decode_publication(channel: str, raw: bytes | str) -> Publication:
    return publication_from(channel, decode_json(raw))


def publication_from(channel: str, obj: dict) -> Publication:
    """The publication a decoded wire object describes."""
    return publication_at(channel, int(obj["o"]), str(obj["e"]), obj)


def publication_at(channel: str, offset: int, epoch: str, body: dict) -> Publication:
    """The publication at ``offset`` whose decoded body (``"t"``, ``"d"`` or ``"b"``,
    ``"i"``) is ``body``. Its data is encoded back at once (the same bytes it was
    published as): a node holds no parsed data longer than it takes to read one
    message."""
    data = base64.b64decode(body["b"]) if "b" in body else Json.encode(body.get("d"))
    return Publication(channel, offset, epoch, data, body.get("i"), float(body.get("t", 0.0)))


_KEEP = re.compile(r"[^A-Za-z0-9_/\-]")
_ESCAPED = re.compile(r"=([0-9A-F]{2})")


def token(channel: str) -> str:
    """A channel name as one NATS subject token / KV key part (no ``.``, ``*``, ``>``)."""
    return _KEEP.sub(lambda m: f"={ord(m.group()):02X}", channel)


def untoken(text: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)
