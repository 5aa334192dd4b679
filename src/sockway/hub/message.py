"""A message on its way to many connections, encoded at most once per encoding.

Encodings are keyed by a small integer, the connection's ``encoding_key``:

* ``SOCKJS`` (-1): the SockJS JSON string (sockjs-protocol "JSON Unicode Encoding"),
  shared by every SockJS transport; the session frames and wraps it at flush time.
* ``0``: an uncompressed RFC 6455 frame, ready to write to a raw WebSocket.
* ``9..15``: a permessage-deflate frame (RFC 7692) compressed with that window size.

Memory: the message keeps each encoding it was asked for until the last reference to
it goes (for a broadcast, when the last recipient's write has been handed to the
kernel, or when it falls out of history).
"""

from __future__ import annotations

from sockway.sockjs.escaping import quote
from sockway.ws.frames import OP_BINARY, OP_TEXT, deflate_payload, frame, frame_header

__all__ = ["SOCKJS", "OutMessage", "set_compress_threshold"]

SOCKJS = -1
_compress_threshold = 128


def set_compress_threshold(size: int) -> None:
    """Messages shorter than ``size`` bytes are never compressed: below about a hundred
    bytes DEFLATE saves little and costs more CPU than the bytes it saves."""
    global _compress_threshold
    _compress_threshold = max(0, int(size))


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
            self._quoted = quote(self.text)
        return self._quoted

    def ws_frame(self, wbits: int = 0) -> bytes:
        """The RFC 6455 frame of this message, compressed with a ``2**wbits`` window
        when ``wbits`` is not 0 and the message is long enough."""
        frames = self._frames
        if frames is None:
            frames = self._frames = {}
        else:
            cached = frames.get(wbits)
            if cached is not None:
                return cached
        opcode = OP_BINARY if self.binary else OP_TEXT
        payload = self.payload
        if wbits and len(payload) >= _compress_threshold:
            compressed = deflate_payload(payload, wbits)
            encoded = frame_header(opcode, len(compressed), compressed=True) + compressed
        else:
            encoded = frames.get(0) or frame(opcode, payload)
            frames[0] = encoded
        frames[wbits] = encoded
        return encoded

    def encode(self, key: int) -> bytes:
        return self.quoted if key < 0 else self.ws_frame(key)

    def __repr__(self) -> str:
        return f"OutMessage({self.data[:40]!r}{'...' if len(self.data) > 40 else ''})"
