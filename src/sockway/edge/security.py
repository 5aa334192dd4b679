"""Edge security: the origin allow-list, trusted proxies and client addresses.

Cross-site WebSocket hijacking: browsers let any page open a WebSocket (or a SockJS
session) to any host, with the user's cookies, and the server sees only the ``Origin``
header. The allow-list is checked on every WebSocket upgrade and every SockJS request
that carries an Origin. Default: same origin only (the Origin's scheme, host and port
equal the request's), and requests with no Origin are let through, since browsers
always send one on these requests and other programs are not a hijacking vector.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

__all__ = ["OriginPolicy", "ProxyPolicy"]


class OriginPolicy:
    def __init__(self, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.exact = {a.rstrip("/").lower() for a in allowed if "*" not in a}
        self.patterns = [a.rstrip("/").lower() for a in allowed if "*" in a and a != "*"]

    def allows(self, origin: str | None, own_origin: str) -> bool:
        """``own_origin`` is the gateway's origin as the client addressed it."""
        if origin is None or self.any:
            return True
        origin = origin.rstrip("/").lower()
        if origin == own_origin.lower() or origin in self.exact:
            return True
        return any(fnmatch.fnmatchcase(origin, p) for p in self.patterns)

    def describe(self) -> str:
        if self.any:
            return "any origin"
        allowed = sorted(self.exact) + self.patterns
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


def origin_host(origin: str) -> str:
    return urlsplit(origin).netloc
