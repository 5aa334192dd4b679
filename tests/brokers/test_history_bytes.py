"""History bounded in bytes (``history_max_bytes``) on every engine: the same
publications on the memory, Redis and NATS engines leave the same history (the newest
publications whose data plus 500 bytes each fit), and recovery gives the same
``recovered`` answers. Redis trims its stream to the bound (the stream and the channel's
byte count are read back from Redis); every engine hands out data as its JSON bytes,
never parsed."""

from __future__ import annotations

import os

import pytest
from realtime_run import run

pytestmark = pytest.mark.timeout(120)

ENTRY = 500


def unique(name: str) -> str:
    return f"{name}-{os.urandom(3).hex()}"


# A publication larger than the whole bound (delivered, not kept) comes fifth.
SIZES = [100, 900, 300, 50, 3000, 700, 200, 400, 600, 10]
BOUND = 3 * ENTRY + 1500


@run(90)
async def test_history_bounded_in_bytes_alike_on_every_engine(redis_server, nats_server):
    from sockway.brokers.base import HistoryPolicy, StreamPosition, entry_cost, resolve
    from sockway.brokers.memory import MemoryBroker
    from sockway.brokers.nats import NatsBroker
    from sockway.brokers.redis import RedisBroker
    from sockway.jsonutil import Json

    engines = {"memory": MemoryBroker(), "redis": RedisBroker(redis_server.url + "?commands=off"),
               "nats": NatsBroker(nats_server.url + "?commands=off")}
    for broker in engines.values():
        await broker.start()
    policy = HistoryPolicy(size=6, max_bytes=BOUND)
    answers: dict[str, list] = {}
    stored: dict[str, list] = {}
    try:
        for name, broker in engines.items():
            channel = unique("bytes")
            out = answers[name] = []
            broker.interest(channel, True)
            epoch = (await resolve(broker.history(channel, policy))).position.epoch
            for i, size in enumerate(SIZES):
                pub = await resolve(broker.publish(channel, f"{i}" + "x" * (size - 3), policy))
                kept = await resolve(broker.history(channel, policy))
                assert all(isinstance(p.data, Json) for p in kept.publications)
                assert sum(entry_cost(p) for p in kept.publications) <= BOUND
                out.append((pub.offset, [p.offset for p in kept.publications],
                            [p.data.value[0] for p in kept.publications]))
            for since in range(0, len(SIZES) + 1):
                r = await resolve(broker.history(channel, policy, StreamPosition(since, epoch)))
                out.append((since, r.recovered, [p.offset for p in r.publications]))
            if name == "redis":
                client = redis_server.client()
                entries = client.xrange(f"sockway:{{{channel}}}:s")
                stored[name] = [int(entry_id.split(b"-")[0]) for entry_id, _fields in entries]
                counted = sum(int(fields[b"c"]) for _id, fields in entries)
                assert int(client.hget(f"sockway:{{{channel}}}:m", "b")) == counted <= BOUND
        # What the memory engine keeps after the last publication: the newest that fit.
        assert answers["memory"][-1 - len(SIZES) - 1][1] == [8, 9, 10]
        assert answers["redis"] == answers["memory"]
        assert answers["nats"] == answers["memory"]
        assert stored["redis"] == [8, 9, 10]
    finally:
        for broker in engines.values():
            await broker.stop()
