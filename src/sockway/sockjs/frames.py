"""SockJS frames and their per-transport wrapping ("Protocol and framing" in
sockjs-protocol).

Frames the client accepts:

* ``o`` -- open, sent once when a session starts;
* ``h`` -- heartbeat;
* ``a[...]`` -- an array of JSON-encoded messages;
* ``c[code,"reason"]`` -- close.

Each HTTP transport wraps a frame its own way (see the ``wrap_*`` functions); WebSocket
carries the bare frame as one text message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sockway.jsonutil import dumps
from sockway.sockjs.escaping import quote, quote_js

__all__ = [
    "ANOTHER_CONNECTION",
    "CALLBACK_RE",
    "EVENTSOURCE_PRELUDE",
    "HEARTBEAT",
    "OPEN",
    "XHR_STREAMING_PRELUDE",
    "close_frame",
    "htmlfile_prelude",
    "messages_frame",
    "wrap_eventsource",
    "wrap_htmlfile",
    "wrap_jsonp",
    "wrap_xhr",
]

OPEN = b"o"
HEARTBEAT = b"h"


def messages_frame(quoted: Iterable[bytes]) -> bytes:
    """``a[...]`` from messages already encoded with :func:`~.escaping.quote`."""
    return b"a[" + b",".join(quoted) + b"]"


def close_frame(code: int, reason: str) -> bytes:
    """``c[code,"reason"]``."""
    return b"c[" + str(int(code)).encode() + b"," + quote(reason) + b"]"


ANOTHER_CONNECTION = close_frame(2010, "Another connection still open")

# xhr-streaming: 2 KiB of 'h' so that old browsers start delivering the stream
# (sockjs-protocol XhrStreaming.test_transport).
XHR_STREAMING_PRELUDE = b"h" * 2048 + b"\n"
# eventsource: a leading new line (an Opera bug, EventSource.test_transport).
EVENTSOURCE_PRELUDE = b"\r\n"

_HTMLFILE_HEAD = """<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.%s;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"""

# A JSONP/htmlfile callback may only use these characters (HtmlFile.test_invalid_callback).
# Matched whole with fullmatch: "$" would also match before a trailing newline.
CALLBACK_RE = re.compile(r"[a-zA-Z0-9_.\-]{1,256}")


def htmlfile_prelude(callback: str) -> bytes:
    """The htmlfile page head, padded past 1 KiB so browsers start rendering it."""
    head = _HTMLFILE_HEAD % callback
    padding = " " * max(0, 1024 - len(head) + 14)
    return (head + padding + "\r\n\r\n").encode("utf-8")


def wrap_xhr(frame: bytes) -> bytes:
    """xhr-polling and xhr-streaming: one frame per line."""
    return frame + b"\n"


def wrap_eventsource(frame: bytes) -> bytes:
    """eventsource: one server-sent event per frame. Frames never contain raw new
    lines (JSON escapes them), so one ``data:`` line always suffices.

    sockjs-client passes each event's data through ``decodeURI`` (older versions
    ``unescape``) before parsing it, so a ``%`` in a message would be mangled ("%41"
    becomes "A") or make the client throw ("URI malformed"). A ``%`` can only occur
    inside a JSON string of the frame, where it is written as the JSON escape
    ``\\u0025``: no percent sign is left to decode, and JSON gives it back, whatever
    the client does or does not decode."""
    if b"%" in frame:
        frame = frame.replace(b"%", b"\\u0025")
    return b"data: " + frame + b"\r\n\r\n"


def wrap_htmlfile(frame: bytes) -> bytes:
    """htmlfile: a script element calling ``p(frame)`` in the hidden page."""
    return b"<script>\np(" + quote_js(frame) + b");\n</script>\r\n"


def wrap_jsonp(frame: bytes, callback: bytes) -> bytes:
    """jsonp-polling: ``/**/callback("frame");``. The leading comment defeats
    content sniffing attacks that start a response with the callback name."""
    return b"/**/" + callback + b"(" + quote_js(frame) + b");\r\n"


def info_body(websocket: bool, cookie_needed: bool, entropy: int) -> bytes:
    """The ``/info`` document (InfoTest in sockjs-protocol)."""
    return dumps(
        {
            "websocket": websocket,
            "cookie_needed": cookie_needed,
            "origins": ["*:*"],
            "entropy": entropy,
        }
    )
