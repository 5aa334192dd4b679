"""Encoding outgoing RFC 6455 data frames once for many recipients.

RFC 6455 section 5.2: a server's frames are not masked, so a frame's bytes depend only
on the payload and the opcode; one broadcast is framed once. RFC 7692 section 7.2.1:
a compressed message is the raw DEFLATE output with the final empty block's
``00 00 ff ff`` tail removed, RSV1 set on the first frame. Each message is compressed
on its own (no context takeover), which is always valid for the receiver and is what
makes compressing a broadcast once possible.
"""

from __future__ import annotations

import struct
import zlib

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_TEXT",
    "deflate_payload",
    "frame",
    "frame_header",
]

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8

_FIN = 0x80
_RSV1 = 0x40
_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")


def frame_header(opcode: int, length: int, *, compressed: bool = False) -> bytes:
    """Header of a final, unmasked frame (RFC 6455 section 5.2)."""
    first = _FIN | opcode | (_RSV1 if compressed else 0)
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _U16.pack(first, 126, length)
    return _U64.pack(first, 127, length)


def frame(opcode: int, payload: bytes, *, compressed: bool = False) -> bytes:
    return frame_header(opcode, len(payload), compressed=compressed) + payload


def deflate_payload(payload: bytes, wbits: int = 15, level: int = 6) -> bytes:
    """Compress one message for permessage-deflate (RFC 7692 section 7.2.1) with a
    fresh context, using at most a ``2**wbits`` byte window (the negotiated
    ``server_max_window_bits``)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -wbits, 8)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if data.endswith(b"\x00\x00\xff\xff"):
        data = data[:-4]
    return data
