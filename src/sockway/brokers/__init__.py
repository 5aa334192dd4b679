"""Brokers: cross-node fan-out, channel history and presence behind one interface.

``memory`` is the embedded default (one process, nothing to run). Distributed engines
(Redis, NATS) implement the same :class:`~.base.Broker` interface so that any number of
gateway nodes share channels, history and presence.
"""

from sockway.brokers.base import (
    Broker,
    BrokerUnavailable,
    HistoryPolicy,
    HistoryResult,
    Publication,
    StreamPosition,
)

__all__ = ["Broker", "BrokerUnavailable", "HistoryPolicy", "HistoryResult", "Publication",
           "StreamPosition", "create_broker"]


def create_broker(url: str | None) -> Broker:
    """A broker from its URL: ``memory://`` (default), ``redis://host:port/db`` (or
    ``rediss://``, ``unix://``), ``nats://host:port``. See docs/brokers.md."""
    if not url or url.startswith("memory:"):
        from sockway.brokers.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("redis:", "rediss:", "unix:")):
        from sockway.brokers.redis import RedisBroker

        return RedisBroker(url)
    if url.startswith(("nats:", "tls:")):
        from sockway.brokers.nats import NatsBroker

        return NatsBroker(url)
    raise ValueError(f"unknown broker {url!r}; use memory://, redis://host:port/db or nats://host:port")
