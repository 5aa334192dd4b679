"""Decoding what clients send ("Framing accepted by the server" in sockjs-protocol).

A SockJS client sends a JSON array of strings (``["a","b"]``) on every transport;
over WebSocket a bare JSON string is accepted too. An empty array is a valid, empty
frame that clients use as a heartbeat.
"""

from __future__ import annotations

from sockway.jsonutil import loads

__all__ = ["BROKEN_JSON", "PAYLOAD_EXPECTED", "PayloadError", "decode_messages"]

BROKEN_JSON = "Broken JSON encoding."
PAYLOAD_EXPECTED = "Payload expected."


class PayloadError(ValueError):
    """The body is not a SockJS payload. ``str(exc)`` is the exact error text the
    protocol requires in the HTTP 500 response."""


def decode_messages(body: bytes | str, *, allow_string: bool = False) -> list[str]:
    """Return the messages carried by ``body``.

    Raises PayloadError("Payload expected.") for an empty body and
    PayloadError("Broken JSON encoding.") for anything that is not a JSON array of
    strings (or, with ``allow_string``, a single JSON string).
    """
    if not body:
        raise PayloadError(PAYLOAD_EXPECTED)
    try:
        value = loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError(BROKEN_JSON) from None
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise PayloadError(BROKEN_JSON)
        return value
    if allow_string and isinstance(value, str):
        return [value]
    raise PayloadError(BROKEN_JSON)
