"""The sequencer (brokers/sequencer.py) against a model of a channel and its broker,
over random interleavings of publications, live deliveries (late, lost, repeated,
out of order where the engine's fan-out allows it), lost connections, history answers
(complete, trimmed, failed) and epoch changes.

What a subscriber must see, whatever happens: every offset once and in order within an
epoch; an offset skipped only when the sequencer said it is lost, and only if the
history answer really did not hold it; another epoch only where the sequencer said so
(epochs are not ordered: a late message of an older epoch is an epoch change too, but
never a repetition); once things settle, the last publication.
Pure code: no event loop, no broker, no fake.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sockway.brokers.base import Publication
from sockway.brokers.sequencer import (
    BUFFERED,
    DELIVER,
    DUPLICATE,
    EPOCH,
    IGNORED,
    Fill,
    Gap,
    Sequencer,
)
from sockway.jsonutil import Json

CHANNEL = "room"


def pub(offset: int, epoch: str = "e0", channel: str = CHANNEL) -> Publication:
    return Publication(channel, offset, epoch, Json.encode(offset))


# -- examples -------------------------------------------------------------------------------


def test_in_order_is_delivered_and_repeats_dropped():
    seq = Sequencer(ordered=True)
    seq.follow(CHANNEL)
    seq.start_at(CHANNEL, 0, "e0")
    assert [seq.offer(pub(n)) for n in (1, 2, 3)] == [DELIVER] * 3
    assert seq.offer(pub(2)) is DUPLICATE
    assert seq.offer(pub(3)) is DUPLICATE
    assert seq.last(CHANNEL) == (3, "e0", None)
    assert seq.stats["duplicates"] == 2


def test_a_channel_not_followed_is_ignored():
    seq = Sequencer(ordered=False)
    assert seq.offer(pub(1)) is IGNORED
    seq.follow(CHANNEL)
    seq.unfollow(CHANNEL)
    assert seq.offer(pub(1)) is IGNORED


def test_a_gap_is_filled_from_history_before_anything_newer():
    seq = Sequencer(ordered=True)
    seq.follow(CHANNEL)
    assert seq.offer(pub(1)) is DELIVER
    gap = seq.offer(pub(4))
    assert isinstance(gap, Gap) and gap.since == (1, "e0", None)
    assert seq.offer(pub(5)) is BUFFERED
    assert seq.waiting(gap)
    fill = seq.filled(gap, [(pub(n), None) for n in (1, 2, 3, 4)])
    assert [p.offset for p in fill.deliver] == [2, 3, 4, 5]
    assert fill.lost == [] and fill.gap is None and fill.duplicates == 1  # 4, buffered and in history
    assert not seq.waiting(gap)
    assert seq.offer(pub(6)) is DELIVER


def test_what_history_lost_is_reported_and_skipped():
    seq = Sequencer(ordered=True)
    seq.follow(CHANNEL)
    seq.offer(pub(1))
    gap = seq.offer(pub(5))
    fill = seq.filled(gap, [(pub(4), None)])  # 2 and 3 trimmed
    assert [p.offset for p in fill.deliver] == [4, 5]
    assert fill.lost == [(2, 3, "e0")]
    gap = seq.offer(pub(8))
    fill = seq.filled(gap, None)  # history could not be read
    assert [p.offset for p in fill.deliver] == [8] and fill.lost == [(6, 7, "e0")]


def test_unordered_fan_out_is_checked_against_the_first_history_read():
    """Offsets 1 and 2 arriving as 2, 1 before anything was delivered: unordered (NATS)
    fills 1 from history; ordered (Redis) trusts the first to arrive."""
    seq = Sequencer(ordered=False)
    seq.follow(CHANNEL)
    seq.start_at(CHANNEL, 0, "e0", 7)
    gap = seq.offer(pub(2), 9)
    assert isinstance(gap, Gap) and gap.since == (0, "e0", 7)
    assert seq.offer(pub(1), 8) is BUFFERED
    fill = seq.filled(gap, [(pub(1), 8), (pub(2), 9)])
    assert [p.offset for p in fill.deliver] == [1, 2] and fill.duplicates == 2
    assert seq.last(CHANNEL) == (2, "e0", 9)

    ordered = Sequencer(ordered=True)
    ordered.follow(CHANNEL)
    ordered.start_at(CHANNEL, 0, "e0")
    assert ordered.offer(pub(2)) is DELIVER


def test_a_new_epoch_is_said_and_nothing_of_the_old_one_comes_twice():
    seq = Sequencer(ordered=False)
    seq.follow(CHANNEL)
    seq.start_at(CHANNEL, 0, "e0")
    assert seq.offer(pub(1)) is DELIVER
    assert seq.offer(pub(1, "e1")) is EPOCH
    assert seq.offer(pub(1, "e0")) is DUPLICATE  # a late repetition of the old epoch
    assert seq.offer(pub(2, "e0")) is EPOCH  # late, but never delivered: said again
    assert seq.offer(pub(2, "e1")) is EPOCH
    assert seq.offer(pub(2, "e0")) is DUPLICATE
    assert seq.offer(pub(1, "e1")) is DUPLICATE
    assert seq.stats["epochs"] == 3 and seq.stats["duplicates"] == 3


def test_resume_fills_from_the_last_delivery_or_the_first_read():
    seq = Sequencer(ordered=True)
    seq.follow(CHANNEL)
    assert seq.resume(CHANNEL) is None  # nothing to start from
    seq.start_at(CHANNEL, 3, "e0")
    gap = seq.resume(CHANNEL)
    assert gap is not None and gap.since == (3, "e0", None)
    assert seq.resume(CHANNEL) is None  # one at a time
    fill = seq.filled(gap, [(pub(n), None) for n in (3, 4, 5)])
    assert [p.offset for p in fill.deliver] == [4, 5]
    gap = seq.resume(CHANNEL)
    assert gap is not None and gap.since == (5, "e0", None)
    # The channel's state was lost (a broker restart): its new epoch holds what was missed.
    fill = seq.filled(gap, [(pub(1, "e1"), None), (pub(2, "e1"), None)])
    assert [(p.offset, p.epoch) for p in fill.deliver] == [(1, "e1"), (2, "e1")]
    assert fill.epochs == [True, False]


def test_an_answer_for_a_channel_unfollowed_meanwhile_delivers_nothing():
    seq = Sequencer(ordered=True)
    seq.follow(CHANNEL)
    seq.offer(pub(1))
    gap = seq.offer(pub(3))
    seq.unfollow(CHANNEL)
    seq.follow(CHANNEL)  # followed again: a new start
    assert not seq.waiting(gap)
    fill = seq.filled(gap, [(pub(2), None), (pub(3), None)])
    assert fill.deliver == [] and fill.gap is None
    assert seq.offer(pub(4)) is DELIVER


def test_a_gap_among_the_buffered_opens_the_next_fill():
    seq = Sequencer(ordered=False)
    seq.follow(CHANNEL)
    seq.offer(pub(1))
    gap = seq.offer(pub(3))
    seq.offer(pub(6))
    seq.offer(pub(7))
    fill = seq.filled(gap, [(pub(2), None), (pub(3), None)])
    assert [p.offset for p in fill.deliver] == [2, 3]
    assert isinstance(fill.gap, Gap) and fill.gap.since[0] == 3
    assert seq.offer(pub(8)) is BUFFERED
    fill = seq.filled(fill.gap, [(pub(n), None) for n in (4, 5, 6)])
    assert [p.offset for p in fill.deliver] == [4, 5, 6, 7, 8]


# -- the model ------------------------------------------------------------------------------


@dataclass
class Broker:
    """A channel as the broker holds it, and what is on its way to one node."""

    ordered: bool
    history_size: int
    epoch: int = 0
    offset: int = 0
    history: list[tuple[Publication, int]] = field(default_factory=list)
    in_flight: list[tuple[Publication, int]] = field(default_factory=list)
    sent: list[tuple[Publication, int]] = field(default_factory=list)
    """Everything ever sent live (to repeat some)."""
    cursors: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def epoch_name(self) -> str:
        return f"e{self.epoch}"

    def publish(self) -> Publication:
        self.offset += 1
        item = (pub(self.offset, self.epoch_name), next(self.cursors))
        if self.history_size:
            self.history = [*self.history, item][-self.history_size:]
        self.in_flight.append(item)
        return item[0]

    def new_epoch(self, keep_offset: bool) -> None:
        """Reset (offsets go on) or the channel's state lost (offsets start again)."""
        self.epoch += 1
        self.history = []
        if not keep_offset:
            self.offset = 0


@dataclass
class Subscriber:
    """What the node delivered, and what the sequencer said along the way."""

    start: tuple[int, str]
    seen: list[tuple[int, str, bool]] = field(default_factory=list)
    """(offset, epoch, said to be an epoch change)."""
    lost: set[tuple[int, str]] = field(default_factory=set)

    def take(self, fill: Fill, answer: list[tuple[Publication, int]] | None) -> None:
        held = {(p.offset, p.epoch) for p, _ in answer or ()}
        for first, last, epoch in fill.lost:
            for offset in range(first, last + 1):
                assert (offset, epoch) not in held, f"{offset} said lost but history had it"
                self.lost.add((offset, epoch))
        for p, changed in zip(fill.deliver, fill.epochs, strict=True):
            self.seen.append((p.offset, p.epoch, changed))

    def check(self) -> None:
        assert len({(o, e) for o, e, _ in self.seen}) == len(self.seen), f"delivered twice: {self.seen}"
        highest = {self.start[1]: self.start[0]}
        previous = (self.start[0], self.start[1], False)
        for offset, epoch, changed in self.seen:
            assert offset > highest.get(epoch, 0), f"offset {offset} of {epoch} after a later one: {self.seen}"
            highest[epoch] = offset
            if epoch != previous[1]:
                assert changed, f"epoch {previous[1]} -> {epoch} not said: {self.seen}"
            else:
                assert not changed, f"an epoch change said within {epoch}"
                assert offset > previous[0], f"out of order: {self.seen}"
                skipped = {(o, epoch) for o in range(previous[0] + 1, offset)}
                assert skipped <= self.lost, f"skipped {sorted(skipped - self.lost)} unsaid: {self.seen}"
            previous = (offset, epoch, changed)


class Node:
    """The engine's part: feed the sequencer, carry out its answers."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.seq = Sequencer(ordered=broker.ordered)
        self.seq.follow(CHANNEL)
        self.seq.start_at(CHANNEL, broker.offset, broker.epoch_name, 0)
        self.sub = Subscriber((broker.offset, broker.epoch_name))
        self.gaps: list[Gap] = []

    def outcome(self, result, p: Publication) -> None:
        if result is DELIVER or result is EPOCH:
            self.sub.seen.append((p.offset, p.epoch, result is EPOCH))
        elif isinstance(result, Gap):
            self.gaps.append(result)
        else:
            assert result in (DUPLICATE, BUFFERED), result

    def arrive(self, index: int) -> None:
        flight = self.broker.in_flight
        if not flight:
            return
        item = flight.pop(0 if self.broker.ordered else index % len(flight))
        self.broker.sent.append(item)
        self.outcome(self.seq.offer(*item), item[0])

    def repeat(self, index: int) -> None:
        """A fan-out message that comes twice (unordered fan-out only)."""
        if self.broker.sent:
            item = self.broker.sent[index % len(self.broker.sent)]
            self.outcome(self.seq.offer(*item), item[0])

    def lose(self, index: int) -> None:
        """A fan-out message lost (unordered fan-out only: a node died after its append)."""
        if self.broker.in_flight:
            self.broker.in_flight.pop(index % len(self.broker.in_flight))

    def reconnect(self) -> None:
        """The connection was lost (with what was on its way) and is back."""
        self.broker.in_flight.clear()
        gap = self.seq.resume(CHANNEL)
        if gap is not None:
            self.gaps.append(gap)

    def answer(self, fails: bool, trim: int) -> None:
        """The history read of the oldest open gap comes back (or fails)."""
        while self.gaps and not self.seq.waiting(self.gaps[0]):
            self.gaps.pop(0)
        if not self.gaps:
            return
        gap = self.gaps.pop(0)
        held = self.broker.history[trim:]
        answer = None if fails else list(held)
        fill = self.seq.filled(gap, answer)
        self.sub.take(fill, answer)
        if fill.gap is not None:
            self.gaps.append(fill.gap)

    def settle(self) -> None:
        for _ in range(10_000):
            if self.broker.in_flight:
                self.arrive(0)
            elif any(self.seq.waiting(g) for g in self.gaps):
                self.answer(False, 0)
            else:
                return
        raise AssertionError("does not settle")


OPS = st.one_of(
    st.tuples(st.just("publish")),
    st.tuples(st.just("arrive"), st.integers(0, 20)),
    st.tuples(st.just("arrive"), st.integers(0, 20)),
    st.tuples(st.just("repeat"), st.integers(0, 50)),
    st.tuples(st.just("lose"), st.integers(0, 20)),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("answer"), st.booleans(), st.integers(0, 3)),
    st.tuples(st.just("epoch"), st.booleans()),
)


def run_model(ordered: bool, history_size: int, ops: list[tuple]) -> Node:
    broker = Broker(ordered, history_size)
    for _ in range(3):
        broker.publish()
    broker.in_flight.clear()  # before the node followed the channel: its history holds them
    node = Node(broker)
    for op, *args in ops:
        if op == "publish":
            broker.publish()
        elif op == "arrive":
            node.arrive(*args)
        elif op == "repeat" and not ordered:
            node.repeat(*args)
        elif op == "lose" and not ordered:
            node.lose(*args)
        elif op == "reconnect":
            node.reconnect()
        elif op == "answer":
            node.answer(*args)
        elif op == "epoch":
            broker.new_epoch(*args)
        node.sub.check()
    last = broker.publish()  # once things settle, the last publication has been delivered
    node.settle()
    node.sub.check()
    assert (last.offset, last.epoch) in [(o, e) for o, e, _c in node.sub.seen], node.sub.seen
    return node


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.integers(0, 6), st.lists(OPS, max_size=80))
def test_subscribers_see_every_offset_once_in_order_or_are_told(ordered, history_size, ops):
    run_model(ordered, history_size, ops)


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.lists(OPS.filter(lambda op: op[0] != "epoch"), max_size=80))
def test_with_complete_history_nothing_is_lost(ordered, ops):
    """A channel whose history holds all that could be missed, answered every time:
    nothing is skipped."""
    ops = [op if op[0] != "answer" else ("answer", False, 0) for op in ops]
    node = run_model(ordered, 10_000, ops)
    assert not node.sub.lost
    offsets = [o for o, _e, _c in node.sub.seen]
    assert offsets == list(range(4, node.broker.offset + 1))
