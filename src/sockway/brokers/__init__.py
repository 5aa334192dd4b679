"""Brokers: cross-node fan-out, channel history and presence behind one interface.

``memory`` is the embedded default (one process, nothing to run). Distributed engines
(Redis, NATS) implement the same :class:`~.base.Broker` interface so that any number of
gateway nodes share channels, history and presence.
"""

from sockway.brokers.base import (
    Broker,
    HistoryPolicy,
    HistoryResult,
    Publication,
    StreamPosition,
)

__all__ = ["Broker", "HistoryPolicy", "HistoryResult", "Publication", "StreamPosition", "create_broker"]


def create_broker(url: str | None) -> Broker:
    """A broker from its URL: ``memory://`` (default)."""
    from sockway.brokers.memory import MemoryBroker

    if not url or url.startswith("memory:"):
        return MemoryBroker()
    raise ValueError(f"unknown broker {url!r}; use memory://")
