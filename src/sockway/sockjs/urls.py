"""SockJS URL scheme ("Base URL", "Session URLs" in sockjs-protocol).

Under an endpoint prefix the server owns every path:

* ``""`` or ``/`` -- greeting
* ``/info`` -- capabilities, entropy
* ``/iframe.html``, ``/iframe-<version>.html`` -- the iframe page
* ``/websocket`` -- raw WebSocket
* ``/<server>/<session>/<transport>`` -- session transports

``server`` and ``session`` may be anything but empty or contain a dot or a slash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TRANSPORTS", "Route", "parse_path"]

TRANSPORTS = frozenset(
    {
        "websocket",
        "xhr",
        "xhr_send",
        "xhr_streaming",
        "eventsource",
        "htmlfile",
        "jsonp",
        "jsonp_send",
    }
)

# Matched whole with fullmatch ("$" would also match before a trailing newline).
_IFRAME = re.compile(r"/iframe(-[^/]*)?\.html")
_SESSION = re.compile(r"/([^/.]+)/([^/.]+)/([^/.]+)")


@dataclass(frozen=True, slots=True)
class Route:
    kind: str  # greeting | info | iframe | raw_websocket | transport | not_found
    server: str = ""
    session: str = ""
    transport: str = ""


GREETING = Route("greeting")
INFO = Route("info")
IFRAME = Route("iframe")
RAW_WEBSOCKET = Route("raw_websocket")
NOT_FOUND = Route("not_found")


def parse_path(tail: str) -> Route:
    """Classify the part of the path after the endpoint prefix (percent-decoded)."""
    if tail in ("", "/"):
        return GREETING
    if tail == "/info":
        return INFO
    if tail == "/websocket":
        return RAW_WEBSOCKET
    if tail.startswith("/iframe"):
        if _IFRAME.fullmatch(tail):
            return IFRAME
        return NOT_FOUND
    match = _SESSION.fullmatch(tail)
    if match is None:
        return NOT_FOUND
    server, session, transport = match.groups()
    if transport not in TRANSPORTS:
        return NOT_FOUND
    return Route("transport", server, session, transport)
