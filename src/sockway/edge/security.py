"""Edge security: the origin allow-list, trusted proxies and client addresses.

Cross-site WebSocket hijacking (RFC 6455 section 10.2): browsers let any page open a
WebSocket (or a SockJS session) to any host, with the user's cookies, and the server
sees only the ``Origin`` header. The allow-list is checked on every WebSocket upgrade
and every SockJS request that carries an Origin. Default: same origin only (the
Origin's scheme, host and port equal the request's); ``"*"`` allows any.

Origins are parsed, never matched as text: an origin is exactly the serialization of
RFC 6454 section 6.1, ``scheme "://" host [ ":" port ]`` (lower case, no path, no
userinfo, no trailing dot), and anything else is refused. A wildcard entry
``https://*.example.org`` stands for whole leading labels: it matches
``https://a.example.org`` and ``https://a.b.example.org``, never ``example.org`` itself
(list it too), ``evilexample.org`` or ``evil.com/.example.org``.

Requests that carry no Origin: browsers send one on every WebSocket handshake, every
cross-origin XHR, fetch and EventSource and every POST (Fetch standard, "append a request
Origin header"), so a request without one is either a program (not a hijacking vector:
it has no visitor's cookies or network position) or one of the few browser requests
that cannot carry it: a ``<script>`` load (jsonp polling) and frame navigations (the
iframe page, htmlfile). Which of those a page of another origin can *read*, and how
each is guarded, is worked out in docs/security.md: jsonp by the ``Referer``
(:meth:`OriginPolicy.allows_referer`), the iframe page and htmlfile by
``Content-Security-Policy: frame-ancestors`` (:meth:`OriginPolicy.frame_ancestors`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Origin", "OriginPolicy", "ProxyPolicy", "parse_allowed_origin", "parse_origin", "referer_origin"]

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# The whole grammar is one line (RFC 6454 section 6.2, RFC 3986 section 3.1 for the
# scheme); written out here because no parser of the standard library or of a URL
# library refuses what an origin must not have: urllib.parse.urlsplit accepts paths and
# userinfo and silently drops tabs and newlines (as WHATWG URL parsing does), and yarl
# normalizes. The host is checked further in _host().
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.\-]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9_.\-*]+)(?::(?P<port>[0-9]{1,5}))?"
)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?")
_URL_ORIGIN = re.compile(r"([a-z][a-z0-9+.\-]*://[^/?#]*)(?:[/?#].*)?", re.S)
MAX_ORIGIN = 300
"""Longest origin considered (a DNS name is at most 253 characters)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """A parsed origin; ``port`` is None for the scheme's default port."""

    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port is not None else "")


def _host(host: str) -> str | None:
    """The host in canonical form (RFC 6454 section 4: an IPv6 address in brackets,
    compressed; a dotted IPv4 address as is; a DNS name of LDH labels, underscores
    tolerated), or None."""
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    if len(host) > 253:
        return None
    labels = host.split(".")
    if labels[-1].isdigit():  # a numeric last label makes it an IPv4 address (WHATWG URL)
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            return None
        return host if canonical == host else None
    return host if all(_LABEL.fullmatch(label) for label in labels) else None


def _split(text: str) -> tuple[str, str, int | None] | None:
    """(scheme, host as written, port or None for the default) of ``text`` if it has
    the shape of an origin, lower-cased; None otherwise."""
    if not text.isascii() or len(text) > MAX_ORIGIN:
        # ASCII first: str.lower() maps some non-ASCII letters to ASCII ones (the Kelvin
        # sign to "k"), which must not make a foreign origin look like an allowed one.
        return None
    match = _ORIGIN.fullmatch(text.lower())
    if match is None:
        return None
    scheme, host, port_text = match.group("scheme", "host", "port")
    port = None
    if port_text is not None:
        if port_text.startswith("0") or not 0 < int(port_text) <= 65535:
            return None
        port = int(port_text)
        if DEFAULT_PORTS.get(scheme) == port:
            port = None
    return scheme, host, port


def parse_origin(text: str) -> Origin | None:
    """The origin ``text`` serializes (an ``Origin`` header's value), or None if it is
    anything else: a path, userinfo, a query, a wildcard, a malformed host or port,
    "null"."""
    parts = _split(text)
    if parts is None:
        return None
    scheme, host, port = parts
    canonical = _host(host)
    return None if canonical is None else Origin(scheme, canonical, port)


def referer_origin(url: str) -> Origin | None:
    """The origin of the page a ``Referer`` names (an absolute URL), or None."""
    if not url.isascii() or len(url) > 8192:
        return None
    match = _URL_ORIGIN.fullmatch(url)
    return parse_origin(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class _Wildcard:
    """``scheme://*.suffix[:port]``: any host that is one or more whole labels followed
    by ``.suffix``."""

    scheme: str
    suffix: str
    port: int | None

    def matches(self, origin: Origin) -> bool:
        host = origin.host
        return (origin.scheme == self.scheme and origin.port == self.port
                and host.endswith("." + self.suffix) and not host.startswith("["))

    def __str__(self) -> str:
        return f"{self.scheme}://*.{self.suffix}" + (f":{self.port}" if self.port is not None else "")


def parse_allowed_origin(entry: str) -> Origin | _Wildcard:
    """One ``allowed_origins`` entry (not ``"*"``): an origin, or a wildcard origin whose
    host starts with ``*.``; one trailing ``/`` is tolerated. Raises ValueError saying
    what is wrong."""
    expected = ("expected scheme://host[:port] with no path, such as https://app.example.com, "
                "or a wildcard such as https://*.example.com")
    if entry.strip().lower() == "null":
        raise ValueError(f"{entry!r}: sandboxed frames and local files of every site send Origin: null; "
                         "allowing it would allow them all (use \"*\" if that is meant)")
    if not entry.isascii():
        raise ValueError(f"{entry!r} is not ASCII: write an international domain name in its "
                         "xn-- (punycode) form, as browsers send it")
    text = entry[:-1] if entry.endswith("/") else entry
    parts = _split(text)
    if parts is None:
        raise ValueError(f"{entry!r} is not an origin: {expected}")
    scheme, host, port = parts
    if host.startswith("*."):
        suffix = _host(host[2:]) if "*" not in host[2:] else None
        if suffix is None or suffix.startswith("[") or suffix.rsplit(".", 1)[-1].isdigit():
            raise ValueError(f"{entry!r}: a wildcard stands for whole leading labels of a DNS name "
                             "(https://*.example.com), and the rest must be a valid name")
        return _Wildcard(scheme, suffix, port)
    canonical = _host(host) if "*" not in host else None
    if canonical is None:
        raise ValueError(f"{entry!r} does not have a valid host: {expected}")
    return Origin(scheme, canonical, port)


class OriginPolicy:
    """The allow-list of one endpoint. Empty: same origin only. ``"*"``: any origin.

    "An allow-list is in force" (:attr:`restricted`) for every list but ``"*"``, the
    same-origin default included: that default promises that only the gateway's own
    pages use it, which a jsonp read from another site would break as surely as it
    breaks an explicit list."""

    def __init__(self, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.exact: set[Origin] = set()
        self.wildcards: list[_Wildcard] = []
        for entry in allowed:
            if entry == "*":
                continue
            parsed = parse_allowed_origin(entry)
            if isinstance(parsed, Origin):
                self.exact.add(parsed)
            else:
                self.wildcards.append(parsed)

    @property
    def restricted(self) -> bool:
        return not self.any

    def allows_origin(self, origin: Origin | None, own: Origin | None) -> bool:
        if origin is None:
            return False
        if origin == own or origin in self.exact:
            return True
        return any(w.matches(origin) for w in self.wildcards)

    def allows(self, origin: str | None, own_origin: str) -> bool:
        """Whether a request with this ``Origin`` header (None: none) may go on.
        ``own_origin`` is the gateway's origin as the client addressed it."""
        if origin is None or self.any:
            return True
        return self.allows_origin(parse_origin(origin), parse_origin(own_origin))

    def allows_referer(self, referer: str, own_origin: str) -> bool:
        """Whether the page a ``Referer`` names is of an allowed origin."""
        return self.any or self.allows_origin(referer_origin(referer), parse_origin(own_origin))

    def frame_ancestors(self) -> str | None:
        """The value of a ``Content-Security-Policy`` that lets only allowed origins
        embed a page (CSP Level 3 ``frame-ancestors``), or None when any origin may.
        ``'self'`` is the gateway's own origin as the browser sees it. An IPv6 or
        underscored host cannot be written in a CSP source expression: such an entry
        is left out, and its pages cannot use the iframe transports."""
        if self.any:
            return None
        sources = ["'self'"]
        for entry in sorted(map(str, self.exact)) + [str(w) for w in self.wildcards]:
            host = entry.split("://", 1)[1]
            if "[" not in host and "_" not in host:
                sources.append(entry)
        return "frame-ancestors " + " ".join(sources)

    def describe(self) -> str:
        if self.any:
            return "any origin"
        allowed = sorted(map(str, self.exact)) + [str(w) for w in self.wildcards]
        return "same origin" + (" and " + ", ".join(allowed) if allowed else " only")


class ProxyPolicy:
    """Which peers may tell us the client's address (X-Forwarded-For) and scheme
    (X-Forwarded-Proto) and host (X-Forwarded-Host)."""

    def __init__(self, trusted: list[str]) -> None:
        self.networks = []
        for entry in trusted:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an address or network") from None

    def trusts(self, peer: str | None) -> bool:
        if not peer or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self.networks)

    def client_address(self, request: web.BaseRequest) -> str:
        """The client's address: the peer's, or the last untrusted hop of
        X-Forwarded-For when the peer (and the hops after it) are trusted proxies."""
        return self.address_of(_peer(request.transport), request.headers.getall("X-Forwarded-For", []))

    def address_of(self, peer: str, forwarded_for: list[str]) -> str:
        """:meth:`client_address` from the TCP peer's address and the values of the
        request's X-Forwarded-For headers (for requests aiohttp does not parse)."""
        address = peer
        if not self.trusts(address):
            return address
        hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
            address = hop
        return address

    def own_origin(self, request: web.BaseRequest) -> str:
        """The origin the client used to reach us (scheme://host[:port])."""
        headers = request.headers
        return self.origin_of(_peer(request.transport), request.secure, headers.get("Host", ""),
                              headers.get("X-Forwarded-Proto"), headers.get("X-Forwarded-Host"))

    def origin_of(self, peer: str, secure: bool, host: str, forwarded_proto: str | None,
                  forwarded_host: str | None) -> str:
        """:meth:`own_origin` from the TCP peer's address, whether the connection is
        TLS, and the request's Host, X-Forwarded-Proto and X-Forwarded-Host."""
        scheme = "https" if secure else "http"
        if self.trusts(peer):
            if forwarded_proto:
                scheme = forwarded_proto.split(",")[0].strip()
            if forwarded_host:
                host = forwarded_host.split(",")[0].strip()
        return f"{scheme}://{host}"


def _peer(transport) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[0] if peer else "?"
