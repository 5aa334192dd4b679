"""Cutting a streamed HTTP response into the pieces a SockJS transport sends.

xhr-streaming sends one frame per line, eventsource one event per blank-line-ended
block, htmlfile one ``<script>`` element per frame; the bytes arrive in chunks cut
anywhere. :class:`Splitter` finds the delimiters in linear time however the stream is
cut: the search resumes where the previous one stopped, and what was consumed is
dropped once per chunk (cutting each piece off the front of the buffer, or searching it
again from its start at every chunk, costs time quadratic in what a chunk holds).
"""

from __future__ import annotations

__all__ = ["Splitter"]


class Splitter:
    """``feed(chunk)`` returns the pieces completed by ``chunk``, delimiters removed."""

    __slots__ = ("_buffer", "_delimiter", "_searched")

    def __init__(self, delimiter: bytes) -> None:
        self._delimiter = delimiter
        self._buffer = bytearray()
        self._searched = 0  # where the next search starts: no delimiter begins before it

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += chunk
        delimiter = self._delimiter
        pieces = []
        start = 0
        while True:
            end = buffer.find(delimiter, max(start, self._searched))
            if end < 0:
                break
            pieces.append(bytes(buffer[start:end]))
            start = end + len(delimiter)
        # A delimiter may begin in the last len(delimiter) - 1 bytes and end in the next chunk.
        self._searched = max(start, len(buffer) - len(delimiter) + 1) - start
        if start:
            del buffer[:start]
        return pieces

    @property
    def pending(self) -> int:
        """Bytes of an unfinished piece."""
        return len(self._buffer)
