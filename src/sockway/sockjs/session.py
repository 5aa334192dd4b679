"""The SockJS session state machine for HTTP transports, without I/O.

sockjs-protocol ("Protocol", "Handling close") defines a session by its id, not by a
connection: a client polls, streams and sends on separate HTTP requests, and the server
keeps the state in between. This class is that state. The edge calls it with the
current time and writes whatever frames it returns; it never sleeps, reads a clock or
touches a socket, so every rule below is unit-tested directly:

* The first receiving request of an unknown session opens it and gets ``o``.
* Only one receiving request may be attached; a second one gets
  ``c[2010,"Another connection still open"]`` and the first one keeps the session.
* Messages queued while no request is attached wait (bounded by ``max_queue_bytes``).
* A closed session answers every receiving request with its close frame until it
  expires; messages queued before the close are delivered first.
* A receiving request aborted by the network closes the session with
  ``c[1002,"Connection interrupted"]``.
* A session with no attached request for ``disconnect_delay`` seconds expires.
* An attached request that has been sent nothing for ``heartbeat_delay`` seconds is
  sent ``h``.

Memory: a session costs about 0.5 KiB plus its queued messages; the queue is bounded
by ``max_queue_bytes`` (the encoded size of the messages waiting).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sockway.sockjs.frames import ANOTHER_CONNECTION, OPEN, close_frame, messages_frame

__all__ = ["Attach", "Session", "State"]

INTERRUPTED = (1002, "Connection interrupted")


class State(enum.IntEnum):
    NEW = 0
    OPEN = 1
    CLOSED = 2


@dataclass(slots=True)
class Attach:
    """What a receiving request must do right after attaching."""

    frames: list[bytes]
    """Frames to send now, in order."""
    release: bool
    """The request must end after sending ``frames`` (it is not attached)."""
    opened: bool = False
    """The session has just opened: the owner must tell the application."""


class Session:
    __slots__ = (
        "_close_frame",
        "attached",
        "close_code",
        "close_reason",
        "detached_at",
        "id",
        "last_send",
        "max_queue_bytes",
        "queue",
        "queue_bytes",
        "state",
    )

    def __init__(self, session_id: str, now: float, *, max_queue_bytes: int = 1 << 20) -> None:
        self.id = session_id
        self.state = State.NEW
        self.queue: list[bytes] = []
        self.queue_bytes = 0
        self.max_queue_bytes = max_queue_bytes
        self.attached = False
        self.detached_at = now
        self.last_send = now
        self.close_code: int | None = None
        self.close_reason = ""
        self._close_frame: bytes | None = None

    # -- receiving requests ---------------------------------------------------------

    def attach(self, now: float) -> Attach:
        """A receiving request (poll or stream) arrives."""
        if self.attached:
            return Attach([ANOTHER_CONNECTION], release=True)
        if self.state is State.CLOSED:
            frames = self.pending_frames()
            self.last_send = now
            return Attach(frames, release=True)
        self.attached = True
        self.last_send = now
        if self.state is State.NEW:
            self.state = State.OPEN
            return Attach([OPEN], release=False, opened=True)
        frames = self.pending_frames()
        return Attach(frames, release=False)

    def detach(self, now: float, *, aborted: bool = False) -> bool:
        """The attached request ended. ``aborted`` means the client went away before
        the server finished the response. Returns True if that closed the session."""
        if not self.attached:
            return False
        self.attached = False
        self.detached_at = now
        if aborted and self.state is State.OPEN:
            return self.close(*INTERRUPTED)
        return False

    def pending_frames(self) -> list[bytes]:
        """The frames due to the attached request: queued messages as one ``a[...]``
        frame, then the close frame if the session is closed. Clears the queue."""
        frames = []
        if self.queue:
            frames.append(messages_frame(self.queue))
            self.queue = []
            self.queue_bytes = 0
        if self._close_frame is not None:
            frames.append(self._close_frame)
        return frames

    def take_one(self) -> bytes | None:
        """For polling transports, which carry one frame per response."""
        if self.queue:
            frame = messages_frame(self.queue)
            self.queue = []
            self.queue_bytes = 0
            return frame
        return self._close_frame

    def sent(self, now: float) -> None:
        self.last_send = now

    # -- application side -------------------------------------------------------------

    def enqueue(self, quoted: bytes) -> bool:
        """Queue a message encoded with :func:`~sockway.sockjs.escaping.quote`.
        Returns False when the queue is over its bound: the owner then closes the
        session (the message is not queued)."""
        if self.state is State.CLOSED:
            return True
        size = len(quoted) + 1
        if self.queue_bytes + size > self.max_queue_bytes:
            return False
        self.queue.append(quoted)
        self.queue_bytes += size
        return True

    def close(self, code: int, reason: str) -> bool:
        """Close the session. Returns False if it was closed already."""
        if self.state is State.CLOSED:
            return False
        self.state = State.CLOSED
        self.close_code = code
        self.close_reason = reason
        self._close_frame = close_frame(code, reason)
        return True

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def close_frame(self) -> bytes | None:
        return self._close_frame

    # -- timers -------------------------------------------------------------------------

    def expired(self, now: float, disconnect_delay: float) -> bool:
        return not self.attached and now - self.detached_at >= disconnect_delay

    def heartbeat_due(self, now: float, heartbeat_delay: float) -> bool:
        return self.attached and now - self.last_send >= heartbeat_delay
