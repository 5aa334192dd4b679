"""A deliberately minimal WebSocket client on a plain socket, for tests that must see or
send exactly the bytes on the wire: the opening handshake (RFC 6455 section 4.1),
masked client frames that may be malformed on purpose (section 5.2), the closing
handshake (section 5.5.1) and permessage-deflate payloads (RFC 7692 section 7.2).

Every read is bounded by a timeout; a test never hangs on a silent server.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
import zlib
from dataclasses import dataclass

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
TIMEOUT = 5.0


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bool = True,
) -> bytes:
    """One frame as a client sends it: masked with a random key unless ``mask`` is
    false (section 5.3)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0)
    first |= (0x10 if rsv3 else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def apply_mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(data), "big")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def deflate_message(data: bytes, wbits: int = 15) -> bytes:
    """A message payload compressed as RFC 7692 section 7.2.1 says: raw DEFLATE, the
    trailing ``00 00 ff ff`` removed."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -wbits)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate_message(data: bytes, wbits: int = 15) -> bytes:
    """Decompress one message compressed without context takeover (section 7.2.2)."""
    decompressor = zlib.decompressobj(-wbits)
    return decompressor.decompress(data + b"\x00\x00\xff\xff") + decompressor.flush()


def deflate_bomb(inflated_mib: int) -> bytes:
    """A permessage-deflate payload of about ``inflated_mib`` KiB that inflates to
    ``inflated_mib`` MiB of zeros, built cheaply: a full flush resets the compressor,
    so the output for 1 MiB of zeros can be repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = compressor.compress(b"\0" * (1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert chunk.endswith(b"\x00\x00\xff\xff")
    return (chunk * inflated_mib)[:-4]


@dataclass
class Frame:
    fin: bool
    rsv1: bool
    rsv2: bool
    rsv3: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE, self
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode()


class HTTPResponse:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def __repr__(self) -> str:
        return f"<HTTPResponse {self.status} {self.headers} {self.body[:200]!r}>"


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    _version, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return int(status), (reason[0] if reason else ""), headers


def handshake_request(path: str, port: int, headers: dict[str, str] | None = None,
                      method: str = "GET", key: str | None = None) -> bytes:
    """The opening handshake of section 4.1; ``headers`` add to or replace (value
    ``None`` removes) the standard ones."""
    base: dict[str, str | None] = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key or base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    base.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in base.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_exchange(port: int, request: bytes, timeout: float = TIMEOUT) -> HTTPResponse:
    """Send one raw HTTP request and read the response (head and Content-Length body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buf:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed before a response head: {buf!r}")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        status, reason, headers = _parse_head(head)
        length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
        while len(body) < length:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return HTTPResponse(status, reason, headers, body)


class RawWS:
    """A client connection whose every byte the test controls."""

    def __init__(self, port: int, path: str, *, headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect(), so that the window the client advertises is small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()
        self.sock.sendall(handshake_request(path, port, headers))
        head = self._read_until(b"\r\n\r\n")
        self.status, self.reason, self.headers = _parse_head(head)
        self.wbits = 0
        extensions = self.header("Sec-WebSocket-Extensions") or ""
        if self.status == 101 and "permessage-deflate" in extensions:
            self.wbits = 15
            for param in extensions.split(";"):
                name, _, value = param.strip().partition("=")
                if name == "server_max_window_bits" and value:
                    self.wbits = int(value.strip('"'))

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    # -- bytes ----------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError("no data from the server in time") from None
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk

    def _read_until(self, marker: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        while marker not in self.buf:
            self._fill(deadline)
        index = self.buf.index(marker)
        data = bytes(self.buf[:index])
        del self.buf[: index + len(marker)]
        return data

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, opcode: int, payload: bytes = b"", **kwargs) -> None:
        self.sock.sendall(client_frame(opcode, payload, **kwargs))

    # -- frames ---------------------------------------------------------------------

    def recv_frame(self, timeout: float | None = None) -> Frame:
        """The next server frame; servers never mask (section 5.1)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        b1, b2 = self._read_exact(2, deadline)
        assert not b2 & 0x80, "a server frame must not be masked"
        n = b2 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exact(8, deadline))[0]
        payload = self._read_exact(n, deadline)
        return Frame(bool(b1 & 0x80), bool(b1 & 0x40), bool(b1 & 0x20), bool(b1 & 0x10), b1 & 0x0F,
                     payload)

    def recv_message(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next data message, reassembled and inflated; control frames other than
        close are skipped (pings are not answered)."""
        first: Frame | None = None
        parts: list[bytes] = []
        while True:
            frame = self.recv_frame(timeout)
            if frame.opcode in (PING, PONG):
                continue
            if frame.opcode == CLOSE:
                raise AssertionError(f"close frame {frame.close_code} {frame.payload[2:]!r}")
            if first is None:
                assert frame.opcode in (TEXT, BINARY), frame
                first = frame
            else:
                assert frame.opcode == CONT, frame
            parts.append(frame.payload)
            if frame.fin:
                break
        data = b"".join(parts)
        if first.rsv1:
            assert self.wbits, "RSV1 set without permessage-deflate"
            data = inflate_message(data, self.wbits)
        return first.opcode, data

    def recv_close(self, timeout: float | None = None) -> Frame:
        """Read until the close frame (data frames before it are dropped)."""
        while True:
            frame = self.recv_frame(timeout)
            if frame.opcode == CLOSE:
                return frame

    def expect_close(self, code: int, timeout: float | None = None) -> Frame:
        """The next frame must be a close frame with ``code``; then the server must end
        the TCP connection (section 7.1.1: the server closes first)."""
        frame = self.recv_frame(timeout)
        assert frame.opcode == CLOSE, f"expected close {code}, got {frame}"
        assert frame.close_code == code, f"expected close {code}, got {frame.close_code} {frame.payload!r}"
        self.expect_eof(timeout)
        return frame

    def expect_eof(self, timeout: float | None = None) -> None:
        """The server ends the connection (FIN or RST) within the timeout; no more
        frames arrive before that."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                self._fill(deadline)
            except EOFError:
                break
            except ConnectionResetError:
                break
        assert not self.buf, f"unexpected bytes before the end: {bytes(self.buf[:100])!r}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found")
