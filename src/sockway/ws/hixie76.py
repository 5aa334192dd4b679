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

__all__ = ["CLOSE", "challenge_response", "decode_frames", "encode_text", "is_hixie76"]

CLOSE = b"\xff\x00"


def is_hixie76(headers) -> bool:
    return "Sec-WebSocket-Key1" in headers and "Sec-WebSocket-Key2" in headers


def _key_number(key: str) -> int:
    digits = int("".join(c for c in key if c.isdigit()) or "0")
    spaces = key.count(" ")
    if spaces == 0 or digits % spaces:
        raise ValueError("invalid Sec-WebSocket-Key")
    return digits // spaces


def challenge_response(key1: str, key2: str, key3: bytes) -> bytes:
    """The 16-byte MD5 answer to the client's keys (draft-76 section 5.2)."""
    return hashlib.md5(
        struct.pack("!II", _key_number(key1), _key_number(key2)) + key3
    ).digest()


def encode_text(data: bytes) -> bytes:
    return b"\x00" + data + b"\xff"


def decode_frames(buffer: bytearray) -> tuple[list[bytes], bool]:
    """Consume complete frames from ``buffer``. Returns the text payloads and whether
    a close frame (or garbage) was seen."""
    messages = []
    while buffer:
        if buffer[0] == 0x00:
            end = buffer.find(b"\xff")
            if end < 0:
                break
            messages.append(bytes(buffer[1:end]))
            del buffer[: end + 1]
        else:
            buffer.clear()
            return messages, True
    return messages, False
