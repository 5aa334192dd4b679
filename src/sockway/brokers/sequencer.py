"""What a node delivers of a channel's live publications: each offset once, in order,
gaps filled from history, duplicates dropped, epoch changes said. Both network engines
(Redis, NATS) drive one :class:`Sequencer`; the memory engine needs none (one process
assigns and delivers).

Pure: no I/O, no asyncio, no clock. The engine feeds it what arrives and carries out
what it answers:

* :meth:`Sequencer.offer` a live publication: :data:`DELIVER` it (or :data:`EPOCH`:
  deliver it, the channel's epoch changed, so what came before cannot be recovered in
  the new one), :data:`DUPLICATE` or :data:`STALE` (drop it), :data:`BUFFERED` (a gap is
  being filled: it comes later), :data:`IGNORED` (the node does not follow the channel),
  or a :class:`Gap`: offsets are missing before it; read the channel's history after
  ``gap.since`` and hand the answer to :meth:`Sequencer.filled`, which says what to
  deliver, in order (and perhaps the next gap).
* :meth:`Sequencer.resume` after the connection to the broker was lost and is back: a
  :class:`Gap` from what was delivered last (or where the first history read started).
* :meth:`Sequencer.start_at`: the position the node's first history read of the
  channel found, which is where its subscribers start.

Positions are ``(offset, epoch, cursor)``: ``cursor`` is the engine's own mark of where
a publication is in its store (NATS: the stream sequence it reads history from; Redis:
None, its history is read by offset).

Two kinds of fan-out:

* **Ordered** (Redis: one script assigns offsets and publishes, one pub/sub connection
  per node): live publications arrive in offset order and are lost only with the
  connection, which :meth:`Sequencer.resume` covers. The first one to arrive after the
  channel is followed is delivered as it is.
* **Unordered** (NATS: every node publishes its own fan-out messages after its append):
  they can arrive out of order and one can be lost. Before anything was delivered, the
  first history read's position is the reference, so the first to arrive is checked
  against what subscribers were given.

Epochs are random names, not ordered: a publication of another epoch than the last one
delivered is delivered as an epoch change (:data:`EPOCH`), whichever is newer. What
keeps it exactly once is that the last position delivered in each of the channel's
recent epochs is remembered: a late fan-out message of an epoch the node switched away
from is a duplicate if that epoch already had its offset (without that, a message of
the old epoch arriving after the new one's first would be delivered again on its next
repetition).

What history no longer holds is lost: :meth:`Sequencer.filled` then delivers what comes
next and reports the offsets skipped (:attr:`Fill.lost`); clients see the offset jump and
can ask for history. ``tests/unit/test_sequencer.py`` checks all of this against a
model, over random interleavings.
"""

from __future__ import annotations

import collections
import enum
import itertools
from typing import Any

from sockway.brokers.base import Publication

__all__ = ["BUFFERED", "DELIVER", "DUPLICATE", "EPOCH", "IGNORED", "Decision", "Fill", "Gap", "Position",
           "Sequencer"]

Position = tuple[int, str, Any]
"""(offset, epoch, cursor): see the module docstring."""


class Decision(enum.Enum):
    DELIVER = "deliver"
    EPOCH = "epoch"
    """Deliver; the epoch changed (subscribers cannot recover what came before it)."""
    DUPLICATE = "duplicate"
    BUFFERED = "buffered"
    IGNORED = "ignored"


DELIVER = Decision.DELIVER
EPOCH = Decision.EPOCH
DUPLICATE = Decision.DUPLICATE
BUFFERED = Decision.BUFFERED
IGNORED = Decision.IGNORED

EARLIER_EPOCHS = 4
"""Epochs a node switched away from whose last position it remembers, per channel."""


class Gap:
    """Offsets missing after ``since``: the engine reads the channel's history after it
    and answers with :meth:`Sequencer.filled`. Live publications meanwhile are buffered."""

    __slots__ = ("channel", "since", "token")

    def __init__(self, channel: str, since: Position, token: int) -> None:
        self.channel = channel
        self.since = since
        self.token = token

    def __repr__(self) -> str:
        return f"Gap({self.channel!r}, since={self.since[:2]}, #{self.token})"


class Fill:
    """What a history answer to a :class:`Gap` resolves to."""

    __slots__ = ("deliver", "duplicates", "epochs", "gap", "live", "lost", "missed")

    def __init__(self) -> None:
        self.deliver: list[Publication] = []
        """To deliver, in this order: what history held after the gap's start, then the
        live publications buffered meanwhile that came after it."""
        self.epochs: list[bool] = []
        """For each of :attr:`deliver`: whether the epoch changed at it."""
        self.lost: list[tuple[int, int, str]] = []
        """``(first, last, epoch)`` of each run of offsets that is skipped: neither the
        history nor the live publications had them."""
        self.missed = 0
        """Publications the history answer held after the gap's start."""
        self.live = 0
        """Live publications that were buffered while the gap was open."""
        self.duplicates = 0
        self.gap: Gap | None = None
        """A new gap among the buffered publications (fill it next), or None."""


class _Channel:
    __slots__ = ("buffer", "earlier", "floor", "gap", "last")

    def __init__(self) -> None:
        self.last: Position | None = None
        """The last publication delivered."""
        self.floor: Position | None = None
        """Where the first history read started (what subscribers were given)."""
        self.gap: Gap | None = None
        self.buffer: list[tuple[Publication, Any]] = []
        self.earlier: dict[str, Position] | None = None
        """The last position delivered in the epochs switched away from (the most
        recent :data:`EARLIER_EPOCHS`)."""


class Sequencer:
    """The sequencing state of every channel a node follows (see the module docstring)."""

    def __init__(self, ordered: bool, stats: collections.Counter | None = None) -> None:
        self.ordered = ordered
        self.stats: collections.Counter = stats if stats is not None else collections.Counter()
        """Counters: ``duplicates``, ``epochs`` (changes), ``gaps`` (found in live publications),
        ``catch_ups`` (history reads asked for, gaps and resumptions)."""
        self._channels: dict[str, _Channel] = {}
        self._tokens = itertools.count(1)

    # -- which channels ------------------------------------------------------------------

    def follow(self, channel: str) -> None:
        """Start following ``channel`` (nothing delivered yet)."""
        if channel not in self._channels:
            self._channels[channel] = _Channel()

    def unfollow(self, channel: str) -> None:
        """Forget ``channel``: its gap (if any) is dropped with it, and a history answer
        that comes for that gap afterwards is ignored."""
        self._channels.pop(channel, None)

    def following(self, channel: str) -> bool:
        return channel in self._channels

    def start_at(self, channel: str, offset: int, epoch: str, cursor: Any = None) -> None:
        """The position the node's first history read of ``channel`` found (later reads
        change nothing)."""
        state = self._channels.get(channel)
        if state is not None and state.floor is None:
            state.floor = (offset, epoch, cursor)

    def last(self, channel: str) -> Position | None:
        """What was delivered last, or None."""
        state = self._channels.get(channel)
        return None if state is None else state.last

    def waiting(self, gap: Gap) -> bool:
        """Whether ``gap`` still waits for its history answer (it is not dropped)."""
        state = self._channels.get(gap.channel)
        return state is not None and state.gap is gap

    # -- what arrives ----------------------------------------------------------------------

    def offer(self, pub: Publication, cursor: Any = None) -> Decision | Gap:
        """A live publication arrived: what to do with it (see the module docstring)."""
        state = self._channels.get(pub.channel)
        if state is None:
            return IGNORED
        if state.gap is not None:
            state.buffer.append((pub, cursor))
            return BUFFERED
        last = state.last
        if last is not None and last[1] == pub.epoch and pub.offset == last[0] + 1:
            state.last = (pub.offset, pub.epoch, cursor)  # the common case: next in order
            return DELIVER
        return self._place(state, pub, cursor, True)

    def resume(self, channel: str) -> Gap | None:
        """The connection to the broker is back: a gap from what was delivered last (or
        from where the first history read started), unless one is open already or the
        node has nothing to start from."""
        state = self._channels.get(channel)
        if state is None or state.gap is not None:
            return None
        since = state.last or state.floor
        if since is None:
            return None
        return self._open(channel, state, since, [])

    def filled(self, gap: Gap, found: list[tuple[Publication, Any]] | None) -> Fill:
        """The history answer to ``gap``: the publications (each with its cursor) the
        channel's history holds from ``gap.since`` on, in order (those at or before it
        are skipped), or None when it could not be read (the gap is then accepted as
        lost). A stale gap (the channel was unfollowed meanwhile) resolves to nothing."""
        fill = Fill()
        state = self._channels.get(gap.channel)
        if state is None or state.gap is not gap:
            return fill
        buffered, state.buffer, state.gap = state.buffer, [], None
        since_offset, since_epoch = gap.since[0], gap.since[1]
        missed = [(p, c) for p, c in found or () if p.epoch != since_epoch or p.offset > since_offset]
        fill.missed = len(missed)
        fill.live = len(buffered)
        before = state.last
        for pub, cursor in missed:
            self._fill_one(fill, state, pub, cursor, False)
        # The buffered ones with gap detection: one published later may have overtaken
        # one stored after the history read (unordered fan-out), and then a new gap takes
        # the rest. A fill that found nothing accepts the gap (history no longer has it),
        # so this ends.
        progress = state.last != before
        pending = sorted(buffered, key=lambda item: item[0].offset)
        for i, (pub, cursor) in enumerate(pending):
            if self._fill_one(fill, state, pub, cursor, progress or i > 0):
                state.buffer.extend(pending[i + 1:])
                break
        return fill

    # -- inside ----------------------------------------------------------------------------

    def _fill_one(self, fill: Fill, state: _Channel, pub: Publication, cursor: Any, detect: bool) -> bool:
        """Place one publication of a fill; True when it opened a new gap."""
        last = state.last or state.floor
        decision = self._place(state, pub, cursor, detect)
        if decision is DELIVER or decision is EPOCH:
            if (decision is DELIVER and last is not None and last[1] == pub.epoch
                    and pub.offset > last[0] + 1):
                fill.lost.append((last[0] + 1, pub.offset - 1, pub.epoch))
            fill.deliver.append(pub)
            fill.epochs.append(decision is EPOCH)
        elif decision is DUPLICATE:
            fill.duplicates += 1
        elif isinstance(decision, Gap):
            fill.gap = decision
            return True
        return False

    def _place(self, state: _Channel, pub: Publication, cursor: Any, detect: bool) -> Decision | Gap:
        ref = state.last
        check = ref is not None or not self.ordered  # ordered: the first one is delivered as it is
        if ref is None:
            ref = state.floor
        decision = DELIVER
        if ref is not None:
            if ref[1] == pub.epoch:
                if check and pub.offset <= ref[0]:
                    self.stats["duplicates"] += 1
                    return DUPLICATE
                if check and detect and pub.offset > ref[0] + 1:
                    self.stats["gaps"] += 1
                    return self._open(pub.channel, state, ref, [(pub, cursor)])
            else:
                earlier = state.earlier
                seen = earlier.get(pub.epoch) if earlier is not None else None
                if seen is not None and pub.offset <= seen[0]:
                    self.stats["duplicates"] += 1
                    return DUPLICATE
                if earlier is None:
                    earlier = state.earlier = {}
                earlier.pop(ref[1], None)
                earlier[ref[1]] = ref
                if len(earlier) > EARLIER_EPOCHS:
                    del earlier[next(iter(earlier))]
                self.stats["epochs"] += 1
                decision = EPOCH
        state.last = (pub.offset, pub.epoch, cursor)
        return decision

    def _open(self, channel: str, state: _Channel, since: Position,
              buffered: list[tuple[Publication, Any]]) -> Gap:
        gap = Gap(channel, since, next(self._tokens))
        state.gap = gap
        state.buffer = buffered
        self.stats["catch_ups"] += 1
        return gap
