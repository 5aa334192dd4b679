"""HTTP header helpers shared by the SockJS handlers (sockjs-protocol "Static URLs":
caching, CORS and cookie rules)."""

from __future__ import annotations

import email.utils
import re
import time

from aiohttp import web

__all__ = [
    "NO_CACHE",
    "cache_for_a_year",
    "cors_headers",
    "empty_response",
    "jsessionid",
    "text_response",
]

NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
YEAR = 365 * 24 * 3600


def cache_for_a_year(headers) -> None:
    headers["Cache-Control"] = f"public, max-age={YEAR}"
    headers["Expires"] = email.utils.formatdate(time.time() + YEAR, usegmt=True)
    headers["Access-Control-Max-Age"] = str(YEAR)


def cors_headers(request: web.BaseRequest, headers) -> None:
    """Echo the Origin with credentials allowed (so JSESSIONID cookies flow), or ``*``
    when the request has none (sockjs-protocol ``verify_cors``)."""
    origin = request.headers.get("Origin")
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
        headers["Vary"] = "Origin"
    else:
        headers["Access-Control-Allow-Origin"] = "*"
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested:
        headers["Access-Control-Allow-Headers"] = requested


_COOKIE_VALUE = re.compile(r"[!#-+\--:<-\[\]-~]{1,256}")
"""A cookie value we echo: RFC 6265 section 4.1.1 cookie-octets, at most 256 of them."""


def jsessionid(request: web.BaseRequest, headers) -> None:
    """The JSESSIONID cookie for sticky load balancers: echo the client's, or set a
    placeholder ("JsessionidCookie" in sockjs-protocol). A value that is not a cookie
    value (not ASCII: the bytes of a header that is not UTF-8, which aiohttp would drop
    when writing it back) is not echoed: the placeholder is set instead."""
    value = request.cookies.get("JSESSIONID", "dummy")
    if not _COOKIE_VALUE.fullmatch(value):
        value = "dummy"
    headers["Set-Cookie"] = f"JSESSIONID={value}; path=/"


def text_response(status: int, text: str, content_type: str = "text/plain") -> web.Response:
    return web.Response(status=status, text=text, content_type=content_type, charset="UTF-8")


def empty_response(status: int, headers: dict[str, str] | None = None) -> web.Response:
    """A response with no body and no Content-Type (404, 405, 304, 204)."""
    response = web.Response(status=status, headers=headers)
    return response
