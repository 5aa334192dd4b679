"""What the network engines (Redis, NATS) put on the wire and in their stores.

A publication is one JSON object::

    {"o": <offset>, "e": "<epoch>", "t": <unix time>, "d": <data>, "i": {<info>}}

``"b": "<base64>"`` replaces ``"d"`` when the data is binary (a raw WebSocket client's
binary message on a broadcast endpoint), so that it arrives binary on every node.
``"i"`` is present only when a client published. The body without ``"o"`` and ``"e"``
(:func:`publication_body`) is built by the publishing node; the engine's atomic step
prepends offset and epoch once it has assigned them (:func:`with_position` does the
same in Python), so the bytes delivered live and the bytes kept in history are the same.

Channel names (``[A-Za-z0-9_.:@/=+-]``, see hub.channels) are made into NATS subject
tokens and KV keys by :func:`token`: letters, digits, ``_``, ``-`` and ``/`` stay,
every other character becomes ``=XX`` (its hex code). The mapping is one-to-one.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from sockway.brokers.base import Publication
from sockway.jsonutil import dumps, loads

__all__ = ["decode_json", "decode_publication", "publication_body", "publication_from", "token", "untoken",
           "with_position"]


def publication_body(data: Any, info: dict | None, when: float) -> bytes:
    """``"t":...,"d":...[,"i":...]`` — the inside of the object, without braces."""
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
    data = base64.b64decode(obj["b"]) if "b" in obj else obj.get("d")
    return Publication(channel, int(obj["o"]), str(obj["e"]), data, obj.get("i"), float(obj.get("t", 0.0)))


_KEEP = re.compile(r"[^A-Za-z0-9_/\-]")
_ESCAPED = re.compile(r"=([0-9A-F]{2})")


def token(channel: str) -> str:
    """A channel name as one NATS subject token / KV key part (no ``.``, ``*``, ``>``)."""
    return _KEEP.sub(lambda m: f"={ord(m.group()):02X}", channel)


def untoken(text: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)
