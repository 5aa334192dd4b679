"""Raw HTTP/1.x over plain sockets, for the SockJS protocol conformance suite.

``http.client`` hides exactly what a protocol test has to see: whether a response is
chunked or close-delimited, HTTP/1.0 framing, whether the server closed the connection,
a request sent with no ``Content-Length``, and a response head that arrives before the
request is complete (the hixie-76 handshake). This module speaks the wire format
itself.

Every read is bounded: each ``recv`` has a socket timeout, each loop a deadline
(``TIMEOUT`` seconds) and a size cap, so a server that stalls fails a test instead of
hanging the suite.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "TIMEOUT",
    "Connection",
    "Response",
    "Stream",
    "open_stream",
    "request",
]

TIMEOUT = 5.0
"""Seconds any single wait for the server may take."""
MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
HOST = "127.0.0.1"

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass
class Response:
    """A response head (and, for :func:`request`, its whole body)."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def chunked(self) -> bool:
        return (self.header("Transfer-Encoding") or "").strip().lower() == "chunked"

    @property
    def connection_tokens(self) -> list[str]:
        value = self.header("Connection") or ""
        return [token.strip().lower() for token in value.split(",") if token.strip()]


class Connection:
    """One TCP connection to the server, with a read buffer."""

    def __init__(self, port: int, host: str = HOST, timeout: float = TIMEOUT) -> None:
        self.host = f"{host}:{port}"
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = bytearray()

    # -- writing --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_request(
        self,
        method: str,
        path: str,
        headers: Headers | None = None,
        body: bytes | str | None = None,
        *,
        version: str = "1.1",
        content_length: bool | None = None,
    ) -> None:
        """Write a request. ``Content-Length`` is sent when there is a body, and for a
        POST even with none (as browsers and the reference suite do), unless
        ``content_length`` says otherwise."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        lines = [f"{method} {path} HTTP/{version}", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in pairs]
        if content_length is None:
            content_length = body is not None or method == "POST"
        if content_length:
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.send(head + (body or b""))

    # -- reading --------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        """Read at least one byte into the buffer; EOFError at end of stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no data from the server within {self.timeout} s")
        self.sock.settimeout(min(remaining, self.timeout))
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def read_exact(self, size: int) -> bytes:
        deadline = self._deadline()
        while len(self.buffer) < size:
            self._fill(deadline)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_until(self, delimiter: bytes, limit: int = MAX_BODY) -> bytes:
        """Bytes up to and including ``delimiter``."""
        deadline = self._deadline()
        while True:
            index = self.buffer.find(delimiter)
            if index >= 0:
                end = index + len(delimiter)
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise AssertionError(f"no {delimiter!r} within {limit} bytes")
            self._fill(deadline)

    def read_line(self) -> bytes:
        return self.read_until(b"\n", MAX_HEAD)

    def read_some(self) -> bytes:
        """Whatever is buffered, or the next bytes the server sends."""
        if not self.buffer:
            self._fill(self._deadline())
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def read_to_eof(self, limit: int = MAX_BODY) -> bytes:
        deadline = self._deadline()
        while len(self.buffer) <= limit:
            try:
                self._fill(deadline)
            except EOFError:
                break
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def read_head(self) -> Response:
        """The status line and headers of the next response."""
        status_line = self.read_line().decode("latin-1").rstrip("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise AssertionError(f"not an HTTP status line: {status_line!r}")
        response = Response(parts[0][5:], int(parts[1]), parts[2] if len(parts) > 2 else "")
        size = 0
        for _ in range(1000):
            line = self.read_line().decode("latin-1")
            size += len(line)
            if size > MAX_HEAD:
                raise AssertionError("response head too large")
            if line in ("\r\n", "\n"):
                return response
            name, _, value = line.partition(":")
            response.headers.append((name.strip(), value.strip()))
        raise AssertionError("too many response headers")

    def read_chunk(self) -> bytes:
        """One chunk of a chunked body; ``b""`` for the last one (its trailer is
        consumed)."""
        size_line = self.read_line().decode("latin-1").strip()
        size = int(size_line.split(";", 1)[0], 16)
        if size == 0:
            for _ in range(100):  # trailer fields, then the blank line
                if self.read_line() in (b"\r\n", b"\n"):
                    return b""
            raise AssertionError("endless chunked trailer")
        data = self.read_exact(size + 2)
        if data[-2:] != b"\r\n":
            raise AssertionError(f"chunk not followed by CRLF: {data[-2:]!r}")
        return data[:-2]

    def read_body(self, response: Response, method: str) -> bytes:
        """The whole body of ``response``, framed the way its head says."""
        if method == "HEAD" or response.status in (101, 204, 304) or response.status < 200:
            return b""
        if response.chunked:
            chunks = []
            total = 0
            while True:
                chunk = self.read_chunk()
                if not chunk:
                    return b"".join(chunks)
                total += len(chunk)
                if total > MAX_BODY:
                    raise AssertionError("chunked body too large")
                chunks.append(chunk)
        length = response.header("Content-Length")
        if length is not None:
            return self.read_exact(int(length))
        if "close" in response.connection_tokens or response.version == "1.0":
            return self.read_to_eof()
        raise AssertionError(
            f"{response.status} response with neither Transfer-Encoding: chunked, "
            f"Content-Length nor Connection: close: {response.headers}"
        )

    def closed_by_peer(self, wait: float = 1.0) -> bool:
        """True if the server has closed (or reset) the connection: nothing is left
        to read and the next read sees end of stream within ``wait`` seconds."""
        if self.buffer:
            return False
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if data:
            self.buffer += data
            return False
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    port: int,
    method: str,
    path: str,
    headers: Headers | None = None,
    body: bytes | str | None = None,
    *,
    version: str = "1.1",
) -> Response:
    """One request on a new connection; returns the response with its whole body."""
    with Connection(port) as conn:
        conn.send_request(method, path, headers, body, version=version)
        response = conn.read_head()
        response.body = conn.read_body(response, method)
        return response


class Stream:
    """A streaming response: the head, then its body as it arrives, whatever the
    framing (chunked, or delimited by the connection closing)."""

    def __init__(self, conn: Connection, response: Response) -> None:
        self.conn = conn
        self.response = response
        self.body = bytearray()
        self.ended = False
        length = response.header("Content-Length")
        self._remaining = int(length) if length is not None else None

    def _more(self) -> None:
        if self.ended:
            raise AssertionError(f"the response ended; unread body: {bytes(self.body)!r}")
        if self.response.chunked:
            chunk = self.conn.read_chunk()
            if chunk:
                self.body += chunk
            else:
                self.ended = True
            return
        if self._remaining is not None:
            if self._remaining == 0:
                self.ended = True
                return
            data = self.conn.read_some()[: self._remaining]
            self._remaining -= len(data)
            self.body += data
            return
        try:
            self.body += self.conn.read_some()
        except EOFError:
            self.ended = True

    def read_until(self, delimiter: bytes) -> bytes:
        """Body bytes up to and including ``delimiter``."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            index = self.body.find(delimiter)
            if index >= 0:
                end = index + len(delimiter)
                data = bytes(self.body[:end])
                del self.body[:end]
                return data
            if time.monotonic() > deadline or len(self.body) > MAX_BODY:
                raise AssertionError(f"no {delimiter!r} in the body; received {bytes(self.body)!r}")
            try:
                self._more()
            except (TimeoutError, EOFError) as exc:
                raise AssertionError(
                    f"no {delimiter!r} in the body ({exc}); received {bytes(self.body)!r}"
                ) from None

    def read_exact(self, size: int) -> bytes:
        deadline = time.monotonic() + TIMEOUT
        while len(self.body) < size:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.body)} of {size} bytes: {bytes(self.body)!r}")
            try:
                self._more()
            except (TimeoutError, EOFError) as exc:
                raise AssertionError(
                    f"only {len(self.body)} of {size} bytes ({exc}): {bytes(self.body)!r}"
                ) from None
        data = bytes(self.body[:size])
        del self.body[:size]
        return data

    def assert_ends(self) -> None:
        """The body ends (last chunk, or connection closed) with nothing more in it."""
        deadline = time.monotonic() + TIMEOUT
        while not self.ended:
            if self.body:
                raise AssertionError(f"unexpected data instead of the end: {bytes(self.body)!r}")
            if time.monotonic() > deadline:
                raise AssertionError("the response did not end")
            try:
                self._more()
            except TimeoutError:
                raise AssertionError(f"the response did not end within {TIMEOUT} s") from None
            except (EOFError, ConnectionResetError):
                if self.response.chunked:
                    raise AssertionError("connection closed before the last chunk") from None
                self.ended = True
        if self.body:
            raise AssertionError(f"unexpected data before the end: {bytes(self.body)!r}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(
    port: int,
    method: str,
    path: str,
    headers: Headers | None = None,
    body: bytes | str | None = None,
    *,
    version: str = "1.1",
) -> Stream:
    """Send a request and return once its response head has arrived."""
    conn = Connection(port)
    try:
        conn.send_request(method, path, headers, body, version=version)
        response = conn.read_head()
    except BaseException:
        conn.close()
        raise
    return Stream(conn, response)
