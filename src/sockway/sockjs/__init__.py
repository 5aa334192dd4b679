"""The SockJS protocol without I/O.

Everything in this package follows the SockJS protocol as defined by the
sockjs/sockjs-protocol test suite (version 0.3.x): framing, the JSON escaping rules,
per-transport wrapping, incoming payload decoding, URL validation and the session state
machine. Nothing here imports aiohttp or touches a socket; the edge (sockway.edge) is
the I/O layer on top.
"""
