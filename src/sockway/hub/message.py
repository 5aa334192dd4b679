"""A message on its way to many connections, encoded at most once per encoding.

Encodings are keyed by a small integer, the connection's ``encoding_key``:

* ``SOCKJS`` (-1): the SockJS JSON string (sockjs-protocol "JSON Unicode Encoding"),
  shared by every SockJS transport; the session frames and wraps it at flush time.
* ``0``: an uncompressed RFC 6455 frame, ready to write to a raw WebSocket.
* :func:`ws_key` ``(wbits, threshold)`` (``wbits`` 9..15 in the low four bits, the
  endpoint's ``compress_threshold`` above them): a permessage-deflate frame (RFC 7692
  section 7.2.1) compressed with a ``2**wbits`` window, or the uncompressed frame when
  the message is shorter than ``threshold`` (section 6: compression is decided per
  message). Endpoints with different thresholds thus never share a wrong encoding.

Every encoding made is counted in :data:`ENCODINGS` (``sockway_encodings_total``), so
that "encoded once per message, not once per recipient" can be checked on a running
gateway: one increment per encoding computed, none per recipient.

Memory: the message keeps each encoding it was asked for until the last reference to
it goes (for a broadcast, when the last recipient's write has been handed to the
kernel, or when it falls out of history).
"""

from __future__ import annotations

from sockway.sockjs.escaping import quote
from sockway.ws.frames import OP_BINARY, OP_TEXT, deflate_payload, frame, frame_header

__all__ = ["ENCODINGS", "SOCKJS", "OutMessage", "set_compress_threshold", "ws_key"]

SOCKJS = -1
ENCODINGS = {"websocket": 0, "websocket-deflate": 0, "sockjs": 0, "sockjs-batch": 0}
"""Encodings made in this process, by kind: ``websocket`` (an uncompressed RFC 6455
frame), ``websocket-deflate`` (a compressed one), ``sockjs`` (a message's SockJS JSON
string), ``sockjs-batch`` (an ``a[...]`` frame made at a flush for SockJS WebSocket
recipients, shared by those whose queues hold the same messages)."""
_compress_threshold = 128


def set_compress_threshold(size: int) -> None:
    """The threshold :meth:`OutMessage.ws_frame` uses when it is given none (connections
    pass their endpoint's, through :func:`ws_key`). Messages shorter than that are
    never compressed: below about a hundred bytes DEFLATE saves little and costs more
    CPU than the bytes it saves."""
    global _compress_threshold
    _compress_threshold = max(0, int(size))


def ws_key(wbits: int, threshold: int) -> int:
    """The encoding key of a raw WebSocket connection: 0 without permessage-deflate,
    else the negotiated server window bits and the endpoint's compress_threshold."""
    return wbits | (max(0, threshold) << 4) if wbits else 0


class OutMessage:
    __slots__ = ("_frames", "_quoted", "_utf8", "binary", "data")

    def __init__(self, data: str | bytes) -> None:
        self.binary = not isinstance(data, str)
        self.data = bytes(data) if self.binary and not isinstance(data, bytes) else data
        self._utf8: bytes | None = None
        self._quoted: bytes | None = None
        self._frames: dict[int, bytes] | None = None

    @property
    def payload(self) -> bytes:
        """The message as bytes (UTF-8 for text)."""
        if self._utf8 is None:
            if self.binary:
                self._utf8 = self.data  # type: ignore[assignment]
            else:
                # Lone surrogates (possible from SockJS clients, whose strings are
                # UTF-16) cannot be encoded; raw WebSocket peers get U+FFFD instead.
                self._utf8 = self.data.encode("utf-8", "replace")  # type: ignore[union-attr]
        return self._utf8  # type: ignore[return-value]

    @property
    def text(self) -> str:
        if self.binary:
            return self.data.decode("utf-8", "replace")  # type: ignore[union-attr]
        return self.data  # type: ignore[return-value]

    @property
    def quoted(self) -> bytes:
        """The SockJS encoding. SockJS carries text only: binary data is decoded as
        UTF-8, invalid sequences replaced by U+FFFD."""
        if self._quoted is None:
            ENCODINGS["sockjs"] += 1
            self._quoted = quote(self.text)
        return self._quoted

    def ws_frame(self, wbits: int = 0, threshold: int | None = None) -> bytes:
        """The RFC 6455 frame of this message, compressed with a ``2**wbits`` window
        when ``wbits`` is not 0 and the message is at least ``threshold`` bytes long
        (default: :func:`set_compress_threshold`'s)."""
        if threshold is None:
            threshold = _compress_threshold
        key = ws_key(wbits, threshold)
        frames = self._frames
        if frames is None:
            frames = self._frames = {}
        else:
            cached = frames.get(key)
            if cached is not None:
                return cached
        opcode = OP_BINARY if self.binary else OP_TEXT
        payload = self.payload
        if wbits and len(payload) >= threshold:
            ENCODINGS["websocket-deflate"] += 1
            compressed = deflate_payload(payload, wbits)
            encoded = frame_header(opcode, len(compressed), compressed=True) + compressed
        else:
            encoded = frames.get(0)
            if encoded is None:
                ENCODINGS["websocket"] += 1
                encoded = frames[0] = frame(opcode, payload)
        frames[key] = encoded
        return encoded

    def encode(self, key: int) -> bytes:
        """The encoding for ``key`` (see the module docstring)."""
        if key < 0:
            return self.quoted
        return self.ws_frame(key & 15, key >> 4)

    def __repr__(self) -> str:
        return f"OutMessage({self.data[:40]!r}{'...' if len(self.data) > 40 else ''})"
