"""Filling a channel's gap from history: the I/O half of the sequencer (brokers/sequencer.py),
the same for every network engine.

A gap's history read runs in a task of its own, retried after each delay of the
engine's ``delays`` (a loaded broker can time a read out) for as long as the gap is
still open; when every attempt failed, the gap is accepted as lost. Then what the
sequencer answers is delivered, in order, and the next gap (if it found one) is filled
the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sockway.brokers.base import Publication
from sockway.brokers.sequencer import Gap, Sequencer

__all__ = ["GapFiller"]

_tasks: set[asyncio.Task] = set()


class GapFiller:
    def __init__(self, sequencer: Sequencer, read: Callable[[Gap], Awaitable[list[tuple[Publication, Any]]]],
                 deliver: Callable[[Publication], None], delays: Sequence[float], log: logging.Logger) -> None:
        """``read(gap)``: the channel's history from ``gap.since`` on, each publication
        with its cursor; ``deliver``: hand one publication to the node's subscribers."""
        self.sequencer = sequencer
        self.read = read
        self.deliver = deliver
        self.delays = delays
        self.log = log

    def start(self, gap: Gap) -> None:
        task = asyncio.get_running_loop().create_task(self._fill(gap))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    async def _fill(self, gap: Gap) -> None:
        found: list[tuple[Publication, Any]] | None = None
        for attempt in range(len(self.delays) + 1):
            try:
                found = await self.read(gap)
                break
            except Exception as exc:
                if attempt == len(self.delays) or not self.sequencer.waiting(gap):
                    self.log.warning("could not fill the gap of channel %s: %s", gap.channel, exc)
                    break
                await asyncio.sleep(self.delays[attempt])
        fill = self.sequencer.filled(gap, found)
        if not self.sequencer.following(gap.channel):
            return
        self.log.info("channel %s: %d publication(s) after offset %d (epoch %s) read from history, %d live",
                      gap.channel, fill.missed, gap.since[0], gap.since[1], fill.live)
        for first, last, epoch in fill.lost:
            self.log.info("channel %s: offsets %d to %d (epoch %s) are no longer in history: skipped",
                          gap.channel, first, last, epoch)
        for pub in fill.deliver:
            self.deliver(pub)
        if fill.gap is not None:
            self.start(fill.gap)
