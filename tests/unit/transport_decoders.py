"""Test-side decoders of the SockJS HTTP transports' byte streams: what a browser-side
client does with what the server writes. Incremental: they accept the stream in any
pieces."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from sockway.sockjs import frames


def _frame_messages(frame: str) -> list[str]:
    assert frame.startswith("a"), frame
    return json.loads(frame[1:])


@dataclass
class Codec:
    wrap: Callable[[bytes], bytes]
    extract: Callable[[bytearray], list[str]]
    """Remove complete frames from the buffer; return them as text."""


def _lines(sep: bytes, prefix: bytes = b"") -> Callable[[bytearray], list[str]]:
    def extract(buffer: bytearray) -> list[str]:
        out = []
        while True:
            end = buffer.find(sep)
            if end < 0:
                return out
            chunk = bytes(buffer[:end])
            del buffer[: end + len(sep)]
            assert chunk.startswith(prefix)
            out.append(chunk[len(prefix):].decode("utf-8"))

    return extract


_SCRIPT = re.compile(rb"<script>\np\((.*?)\);\n</script>\r\n", re.S)
_JSONP = re.compile(rb"/\*\*/cb\((.*?)\);\r\n", re.S)


def _regex(pattern: re.Pattern[bytes]) -> Callable[[bytearray], list[str]]:
    def extract(buffer: bytearray) -> list[str]:
        out = []
        while True:
            match = pattern.match(bytes(buffer))
            if match is None:
                return out
            out.append(json.loads(match.group(1).decode("utf-8")))
            del buffer[: match.end()]

    return extract


DECODERS = {
    "xhr": Codec(frames.wrap_xhr, _lines(b"\n")),
    "eventsource": Codec(frames.wrap_eventsource, _lines(b"\r\n\r\n", b"data: ")),
    "htmlfile": Codec(frames.wrap_htmlfile, _regex(_SCRIPT)),
    "jsonp": Codec(lambda f: frames.wrap_jsonp(f, b"cb"), _regex(_JSONP)),
}


def decode_stream(transport: str, pieces: list[bytes]) -> list[str]:
    codec = DECODERS[transport]
    buffer = bytearray()
    messages: list[str] = []
    for piece in pieces:
        buffer += piece
        for frame in codec.extract(buffer):
            messages.extend(_frame_messages(frame))
    assert not buffer, f"undecoded bytes left: {bytes(buffer)[:80]!r}"
    return messages
