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
from sockway.brokers.urls import check_broker_url, engine_of

__all__ = ["Broker", "BrokerUnavailable", "HistoryPolicy", "HistoryResult", "Publication",
           "StreamPosition", "create_broker"]


def create_broker(url: str | None) -> Broker:
    """A broker from its URL: ``memory://`` (default), ``redis://host:port/db`` (or
    ``rediss://``, ``unix://``), ``nats://host:port``. See docs/brokers.md. A ValueError
    says what is wrong with the URL."""
    check_broker_url(url)
    engine = engine_of(url)
    if engine == "memory":
        from sockway.brokers.memory import MemoryBroker

        return MemoryBroker()
    assert url is not None
    if engine == "redis":
        from sockway.brokers.redis import RedisBroker

        return RedisBroker(url)
    from sockway.brokers.nats import NatsBroker

    return NatsBroker(url)
