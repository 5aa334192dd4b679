"""A small PNG reader (ISO/IEC 15948, the subset screenshots use): 8-bit greyscale, RGB
or RGBA, not interlaced. Enough to check that a screenshot is not blank without an
imaging library."""

from __future__ import annotations

import struct
import zlib
from collections import Counter

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


class Image:
    def __init__(self, width: int, height: int, channels: int, rows: list[bytes]) -> None:
        self.width = width
        self.height = height
        self.channels = channels
        self.rows = rows

    def pixel(self, x: int, y: int) -> tuple[int, ...]:
        row = self.rows[y]
        return tuple(row[x * self.channels:(x + 1) * self.channels])

    def colours(self, step: int = 1) -> Counter:
        """How many times each colour occurs (every ``step``-th pixel of every
        ``step``-th row)."""
        counts: Counter = Counter()
        n = self.channels
        for row in self.rows[::step]:
            pixels = (row[i:i + n] for i in range(0, len(row), n * step))
            counts.update(pixels)
        return counts


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(kind: int, line: bytearray, prior: bytes, bpp: int) -> bytes:
    """Section 9: undo one scanline's filter."""
    if kind == 0:
        return bytes(line)
    if kind == 1:  # Sub
        for i in range(bpp, len(line)):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif kind == 2:  # Up
        line = bytearray((x + y) & 0xFF for x, y in zip(line, prior, strict=True))
    elif kind == 3:  # Average
        for i in range(len(line)):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prior[i]) >> 1)) & 0xFF
    elif kind == 4:  # Paeth
        for i in range(len(line)):
            if i >= bpp:
                line[i] = (line[i] + _paeth(line[i - bpp], prior[i], prior[i - bpp])) & 0xFF
            else:
                line[i] = (line[i] + prior[i]) & 0xFF
    else:
        raise ValueError(f"unknown PNG filter type {kind}")
    return bytes(line)


def decode(data: bytes) -> Image:
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    offset = len(SIGNATURE)
    header = None
    idat = []
    while offset < len(data):
        length, kind = struct.unpack_from("!I4s", data, offset)
        body = data[offset + 8: offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = struct.unpack("!IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in CHANNELS or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    channels = CHANNELS[colour]
    stride = width * channels
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG image data has the wrong size")
    rows = []
    prior = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        prior = _unfilter(raw[start], bytearray(raw[start + 1: start + 1 + stride]), prior, channels)
        rows.append(prior)
    return Image(width, height, channels, rows)
