"""The legacy hixie-76 (draft-ietf-hybi-thewebsocketprotocol-00) handshake.

The SockJS protocol suite still checks it (``Websocket.test_haproxy``): the server must
write its response headers *before* it receives the 8-byte key that follows the
request, as HAProxy forwards them in that order. No current browser speaks this
protocol; sockway answers the handshake and then speaks its simple framing (text
messages between 0x00 and 0xFF bytes, close as ``FF 00``) for SockJS-over-WebSocket.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["CLOSE", "MAX_KEY", "challenge_response", "decode_frames", "encode_text", "is_hixie76", "key_number"]

CLOSE = b"\xff\x00"
MAX_KEY = 2**32 - 1


def is_hixie76(headers) -> bool:
    return "Sec-WebSocket-Key1" in headers and "Sec-WebSocket-Key2" in headers


def key_number(key: str) -> int:
    """The number a ``Sec-WebSocket-Key1``/``-Key2`` header stands for (draft-76 section
    5.2): its ASCII digits read as one integer, divided by its number of spaces. The
    server answers with it as a big-endian 32-bit unsigned integer, so anything else
    is refused before the handshake is answered: no spaces, digits that are not a
    multiple of the spaces, or a quotient over 2**32 - 1. ValueError says which."""
    digits = "".join(c for c in key if "0" <= c <= "9").lstrip("0") or "0"
    spaces = key.count(" ")
    if spaces == 0:
        raise ValueError("a Sec-WebSocket-Key header has no spaces")
    if len(digits) > 20:  # far over 2**32 times any head's number of spaces
        raise ValueError("a Sec-WebSocket-Key header's number is too large")
    number = int(digits)
    if number % spaces:
        raise ValueError("a Sec-WebSocket-Key header's number is not a multiple of its spaces")
    number //= spaces
    if number > MAX_KEY:
        raise ValueError("a Sec-WebSocket-Key header's number is over 2**32 - 1")
    return number


def challenge_response(number1: int, number2: int, key3: bytes) -> bytes:
    """The 16-byte MD5 answer to the client's keys (draft-76 section 5.2): the two key
    numbers (from :func:`key_number`) as big-endian 32-bit integers, then the 8 key bytes."""
    return hashlib.md5(struct.pack("!II", number1, number2) + key3).digest()


def encode_text(data: bytes) -> bytes:
    return b"\x00" + data + b"\xff"


def decode_frames(buffer: bytearray, scanned: int = 0) -> tuple[list[bytes], bool, int]:
    """Consume complete frames from ``buffer``. Returns the text payloads, whether a
    close frame (or garbage) was seen, and how many bytes of an unfinished frame left
    at the start of ``buffer`` were searched for its end: pass it back as ``scanned``
    with the next bytes, so that the scan stays linear however a frame is split."""
    messages = []
    while buffer:
        if buffer[0] == 0x00:
            end = buffer.find(b"\xff", max(1, scanned))
            if end < 0:
                return messages, False, len(buffer)
            messages.append(bytes(buffer[1:end]))
            del buffer[: end + 1]
            scanned = 0
        else:
            buffer.clear()
            return messages, True, 0
    return messages, False, 0
