"""Reading a client's frames: the parts sockway does around the ``websockets`` protocol.

The ``websockets`` Sans-I/O ``ServerProtocol`` parses frames, unmasks and inflates them
and answers control frames. This module holds what sockway adds, without I/O (bytes
in, decisions out), so that it is tested on its own:

* :class:`FrameScanner` follows frame boundaries from the headers alone (RFC 6455
  section 5.2) in what is about to go to the protocol, and cuts it into pieces:

  - before and after each control frame, so that the frames before it are handled
    (dispatched, or failed) before the protocol answers it, and its answer is written
    before anything that comes after it: a pong leaves at once, before a message whose
    last fragment follows the ping (section 5.5.2; control frames may come between the
    fragments of a message, section 5.4), and a close after an invalid frame is not
    answered as if that frame had been fine;
  - before a close frame that comes between the fragments of a message: that close is
    valid (section 5.4) and is answered with a normal closing handshake, the message
    being abandoned, rather than given to the protocol, which takes it for an error;
  - before a frame that makes its message have more frames than
    :func:`fragments_allowed` allows (too small on average: close 1009), before the
    protocol parses it;

  and it tells where a frame starts, so that the connection's fast path for the
  commonest frame resumes exactly there.
* :class:`MessageAssembler` reassembles a fragmented message in one ``bytearray``:
  whatever the number of fragments, a message costs its size (no object per fragment),
  and a text message is checked for UTF-8 as its fragments come (section 8.1: fail as
  soon as the bytes cannot be UTF-8), the decoded pieces thrown away, then decoded once.

Both are linear in the bytes they are given, whatever the split.
"""

from __future__ import annotations

import codecs

try:  # the C routine the websockets library ships; its pure-Python fallback otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = [
    "CLOSE",
    "FEED",
    "FRAGMENT_BYTES",
    "FREE_FRAGMENTS",
    "TOO_MANY_FRAGMENTS",
    "FrameScanner",
    "MessageAssembler",
    "fragments_allowed",
]

FEED = 0
"""Action: give these bytes to the protocol, then handle its events and output."""
CLOSE = 1
"""Action: a valid-looking close frame came between fragments; here is its (unmasked)
payload. Nothing more is read after it."""
TOO_MANY_FRAGMENTS = 2
"""Action: the message in progress has more frames than :func:`fragments_allowed` (the
value is their number). Nothing more is read."""

FREE_FRAGMENTS = 64
"""Frames a fragmented message may have whatever their size..."""
FRAGMENT_BYTES = 64
"""...and beyond those, one more per this many bytes of payload: on average, a frame
past the first 64 must carry at least 64 bytes."""

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def fragments_allowed(payload_bytes: int) -> int:
    """The most frames a fragmented message with ``payload_bytes`` bytes of payload so
    far may have: 64, plus one per 64 bytes.

    Each frame costs the protocol about 5-10 us to parse, whatever its size: a message
    sent as 2-byte fragments (8 bytes on the wire each) costs seconds of the event loop
    per MiB, and a client could hold a message open that way indefinitely below
    ``max_message_size``. With this bound such a client is closed (1009) after 66
    frames, while fragments of 64 bytes or more, and any message of up to 64 frames,
    pass: what a message costs per byte stays at most what a stream of small messages
    costs."""
    return FREE_FRAGMENTS + payload_bytes // FRAGMENT_BYTES


class FrameScanner:
    """Follows client frame boundaries from headers only and decides how incoming
    bytes go to the protocol (see the module docstring). ``scan`` returns actions:
    ``(FEED, bytes)``, ``(CLOSE, payload)``, ``(TOO_MANY_FRAGMENTS, count)``.

    A frame header that is not complete yet is held back (at most 13 bytes) and given
    with the next bytes, so that a frame's opcode is known before any of it is given
    out. Linear: each byte is looked at once, and a frame's payload is skipped."""

    __slots__ = ("_capture", "_cut_after", "_fragments", "_head", "_message_bytes", "_skip", "stopped")

    def __init__(self) -> None:
        self._head = b""  # an incomplete frame header, not given out yet
        self._skip = 0  # payload bytes of the current frame still to come
        self._cut_after = False  # the current frame is a control frame: cut after it
        self._fragments = 0  # frames of the fragmented message in progress (0: none)
        self._message_bytes = 0  # their payload bytes (as sent: compressed or not)
        self._capture: bytearray | None = None  # a close frame between fragments, being collected
        self.stopped = False  # a CLOSE or TOO_MANY_FRAGMENTS action was given: read no more

    @property
    def at_frame_start(self) -> bool:
        """Everything given out so far ended with a whole frame, and no fragmented
        message is in progress: the next byte starts a new message's frame."""
        return not self._skip and not self._head and not self._fragments and self._capture is None

    def scan(self, data: bytes) -> list[tuple[int, bytes | int]]:
        if self.stopped:
            return []
        if self._head:
            data = self._head + data
            self._head = b""
        actions: list[tuple[int, bytes | int]] = []
        size = len(data)
        start = i = 0  # start: first byte not given out yet; i: scanning position
        if self._capture is not None:
            self._collect(data, 0, actions)  # stops when the close frame is whole
            return actions
        while i < size:
            skip = self._skip
            if skip:
                if skip > size - i:
                    self._skip = skip - (size - i)
                    i = size
                    break
                i += skip
                self._skip = 0
                if self._cut_after:
                    self._cut_after = False
                    actions.append((FEED, data[start:i]))
                    start = i
                continue
            # A header: 2 bytes, then a 16- or 64-bit length, then a 4-byte mask key.
            if size - i < 2:
                break
            first = data[i]
            second = data[i + 1]
            length = second & 0x7F
            need = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)
            if size - i < need:
                break
            if length == 126:
                length = int.from_bytes(data[i + 2:i + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[i + 2:i + 10], "big")
            opcode = first & 0x0F
            if opcode & 0x08:  # a control frame (section 5.5)
                if (opcode == 0x8 and self._fragments and first == 0x88 and second & 0x80
                        and length <= 125 and length != 1):
                    # A close between fragments (its bits valid as far as a header shows):
                    # kept from the protocol, which would fail the connection with 1002.
                    if i > start:
                        actions.append((FEED, data[start:i]))
                    self._capture = bytearray()
                    self._skip = need + length
                    self._collect(data, i, actions)
                    return actions
                if i > start:
                    actions.append((FEED, data[start:i]))
                    start = i
                self._cut_after = True
            elif opcode == 0x0:
                if self._fragments:
                    self._fragments += 1
                    self._message_bytes += length
                    if self._fragments > FREE_FRAGMENTS + self._message_bytes // FRAGMENT_BYTES:
                        if i > start:
                            actions.append((FEED, data[start:i]))
                        actions.append((TOO_MANY_FRAGMENTS, self._fragments))
                        self.stopped = True
                        return actions
                    if first & 0x80:
                        self._fragments = 0
            elif not first & 0x80 and not self._fragments:
                self._fragments = 1  # the first frame of a fragmented message
                self._message_bytes = length
            i += need
            self._skip = length
            if not length and self._cut_after:
                self._cut_after = False
                actions.append((FEED, data[start:i]))
                start = i
        if i < size:  # an incomplete header: held back
            self._head = data[i:]
            size = i
        if size > start:
            actions.append((FEED, data if start == 0 and size == len(data) else data[start:size]))
        return actions

    def _collect(self, data: bytes, offset: int, actions: list) -> int:
        """Add to the close frame being collected; when it is whole, give its unmasked
        payload as a CLOSE action. Returns the offset after what was taken."""
        capture = self._capture
        assert capture is not None
        take = min(self._skip, len(data) - offset)
        capture += data[offset:offset + take]
        self._skip -= take
        if not self._skip:
            self._capture = None
            # Header: 2 bytes, the 4-byte mask key, then at most 125 bytes of payload.
            actions.append((CLOSE, apply_mask(bytes(capture[6:]), bytes(capture[2:6]))))
            self.stopped = True
        return offset + take


class MessageAssembler:
    """The fragmented message in progress (RFC 6455 section 5.4), if any."""

    __slots__ = ("_buffer", "_utf8")

    def __init__(self) -> None:
        self._buffer: bytearray | None = None
        self._utf8: codecs.IncrementalDecoder | None = None  # text only

    @property
    def active(self) -> bool:
        return self._buffer is not None

    def start(self, data: bytes | bytearray, text: bool) -> None:
        """The first fragment. Raises UnicodeDecodeError if ``data`` cannot begin a
        UTF-8 text."""
        if text:
            utf8 = _utf8_decoder()
            utf8.decode(data)
            self._utf8 = utf8
        else:
            self._utf8 = None
        self._buffer = bytearray(data)

    def add(self, data: bytes | bytearray, fin: bool) -> str | bytes | None:
        """A continuation fragment; the whole message after the final one. Raises
        UnicodeDecodeError as soon as the text cannot be UTF-8 (the message is then
        dropped)."""
        buffer = self._buffer
        assert buffer is not None
        buffer += data
        utf8 = self._utf8
        if not fin:
            if utf8 is not None:
                try:
                    utf8.decode(data)  # a check only: the pieces are not kept
                except UnicodeDecodeError:
                    self.reset()
                    raise
            return None
        self.reset()
        if utf8 is not None:
            return buffer.decode()
        return bytes(buffer)

    def reset(self) -> None:
        """Drop the message in progress."""
        self._buffer = None
        self._utf8 = None
