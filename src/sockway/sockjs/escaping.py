"""SockJS's JSON encoding of strings ("JSON Unicode Encoding" in sockjs-protocol).

Browsers mangle some code points on XHR-based transports, so a SockJS server must send
them escaped as ``\\uXXXX``. The protocol lists them (``escapable_by_server``)::

    [\\x00-\\x1f\\u200c-\\u200f\\u2028-\\u202f\\u2060-\\u206f\\ufff0-\\uffff]

JSON already escapes the C0 controls. We also escape lone surrogates
(``\\ud800-\\udfff``): a browser may send them (JavaScript strings are UTF-16), they
cannot be encoded in UTF-8, and escaped they round-trip to the browser unchanged.
Astral characters (a valid surrogate pair in JavaScript) are one code point in Python
and travel as plain UTF-8.
"""

from __future__ import annotations

import json
import re

from sockway.jsonutil import HAVE_ORJSON, exact

if HAVE_ORJSON:
    import orjson

__all__ = ["ESCAPABLE_BY_SERVER", "quote", "quote_js"]

ESCAPABLE_BY_SERVER = re.compile(
    "[\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def quote(text: str) -> bytes:
    """Encode ``text`` as a JSON string literal (UTF-8 bytes, quotes included) with
    every character of ESCAPABLE_BY_SERVER written as ``\\uXXXX``."""
    if ESCAPABLE_BY_SERVER.search(text) is None:
        if HAVE_ORJSON:
            return exact(orjson.dumps(text))  # kept in session queues: its exact size
        return json.dumps(text, ensure_ascii=False).encode("utf-8")
    encoded = json.dumps(text, ensure_ascii=False)
    return ESCAPABLE_BY_SERVER.sub(_escape, encoded).encode("utf-8")


_JS_UNSAFE = re.compile("[<>&\u2028\u2029]")


def quote_js(frame: bytes) -> bytes:
    """Encode a SockJS frame as a JavaScript string literal that is safe inside an HTML
    ``<script>`` element (htmlfile) and inside a JSONP response.

    ``<`` ``>`` and ``&`` become ``\\u003c`` ``\\u003e`` ``\\u0026``, so message content
    such as ``</script>`` or ``<!--`` cannot end or alter the script element it travels
    in (the reference server sends them verbatim and the message is lost); U+2028 and
    U+2029 are escaped because older JavaScript engines reject them in string literals.
    """
    text = frame.decode("utf-8", "surrogatepass")
    encoded = json.dumps(text, ensure_ascii=False)
    return _JS_UNSAFE.sub(_escape, encoded).encode("utf-8", "surrogatepass")
