"""Decoding what clients send ("Framing accepted by the server" in sockjs-protocol).

A SockJS client sends a JSON array of strings (``["a","b"]``) on every transport;
over WebSocket a bare JSON string is accepted too. An empty array is a valid, empty
frame that clients use as a heartbeat. ``jsonp_send`` may carry it in the ``d`` field
of a form instead (sockjs-protocol ``JsonPolling``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from sockway.jsonutil import loads

__all__ = ["BROKEN_JSON", "PAYLOAD_EXPECTED", "PayloadError", "decode_messages", "form_field", "utf8_size"]

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


def form_field(body: bytes, name: str = "d") -> bytes:
    """The first ``name`` field of an ``application/x-www-form-urlencoded`` body,
    percent-decoded (``+`` is a space, an invalid escape such as ``%ZZ`` stays as it
    is), or b"" if there is none: what a ``jsonp_send`` form carries.

    Bytes, not text: whether they are UTF-8 is the JSON parser's question, so a field
    that is not UTF-8 gets "Broken JSON encoding." as in any other send, instead of
    replacement characters the client never sent. Latin-1 maps each byte to one code
    point and back, so the standard library's parser works on the bytes exactly."""
    for key, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1"):
        if key == name:
            return value.encode("latin-1")
    return b""


def utf8_size(message: str) -> int:
    """Bytes of ``message`` in UTF-8, what ``max_message_size`` counts; a lone
    surrogate (a JSON escape can carry one) counts the 3 bytes it would take."""
    return len(message) if message.isascii() else len(message.encode("utf-8", "surrogatepass"))
