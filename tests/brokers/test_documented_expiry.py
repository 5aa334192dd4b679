"""History that expires, on every engine (docs/channels.md "Recovery", docs/brokers.md
"Epochs" and the ``meta_ttl`` option):

* ``history_ttl``: a publication older than the namespace's ``history_ttl`` is gone from
  history. A client that missed it and comes back with its ``since`` position gets
  ``recovered: false`` and no publications; before the TTL, the same request recovers
  it (memory, Redis and NATS).
* ``meta_ttl`` (Redis and NATS): ``meta_ttl`` seconds after a channel's last
  publication its state (offset, epoch, history) is gone: a client coming back gets
  ``recovered: false`` with a new epoch, and the next publication is offset 1 of that
  epoch.

The history TTL is a rule on the publication's time (each engine drops what is older),
so that test waits until the TTL has passed; the channel state's expiry is waited for
where it happens: the Redis keys, the NATS history subject."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from cluster import Client, start_node, stop_node
from realtime_run import run

pytestmark = pytest.mark.timeout(90)

TTL = 3.0
"""history_ttl: long enough for the within-the-TTL recovery to happen within it on a
loaded machine."""
META_TTL = 1.0
TTL_NAMESPACE = f"""
[[namespace]]
name = "ttl"
publish = "open"
history_size = 10
history_ttl = {TTL}
"""


def broker_url(engine: str, request, options: str = "") -> tuple[str, object]:
    if engine == "memory":
        return "memory://", None
    server = request.getfixturevalue(f"{engine}_server")
    return server.url + options, server


async def state_gone(engine: str, server, channel: str) -> None:
    """Until the broker no longer holds the channel's state: its offset and epoch (the
    Redis meta hash; the NATS history subject's last message)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if engine == "redis":
            if not await asyncio.to_thread(server.client().exists, f"sockway:{{{channel}}}:m"):
                return
        elif not await nats_subject_holds(server, channel, (100, 0.0)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{channel}: state still there after 10 s")


async def nats_subject_holds(server, channel: str, policy: tuple[int, float]) -> bool:
    """Whether the channel's history subject still has a message (the engine's naming:
    brokers/nats.py)."""
    import nats
    from nats.js.errors import NotFoundError

    from sockway.brokers.wire import token

    size, ttl = policy
    name = f"{size}_{int(ttl * 1000)}"
    nc = await nats.connect(server.url, connect_timeout=2)
    try:
        await nc.jetstream().get_last_msg(f"SOCKWAY_H_{name}", f"sockway.h.{name}.{token(channel)}")
        return True
    except NotFoundError:
        return False
    finally:
        await nc.close()


@pytest.mark.parametrize("engine", ["memory", "redis", "nats"])
@run(60)
async def test_history_ttl_expiry_means_no_recovery(engine, request):
    url, _ = broker_url(engine, request)
    gw = start_node(url, TTL_NAMESPACE)
    try:
        channel = f"ttl:{os.urandom(4).hex()}"
        client = await Client.connect(gw)
        await client.ok("subscribe", channel=channel)
        await client.ok("publish", channel=channel, data="seen")
        seen = await client.next("message")
        await client.close()
        # Published while the client is away:
        missed = await Client.connect(gw)
        await missed.ok("publish", channel=channel, data="missed")
        await missed.close()
        since = {"offset": seen["offset"], "epoch": seen["epoch"]}

        # Within the TTL the client recovers what it missed ...
        back = await Client.connect(gw)
        result = await back.ok("subscribe", channel=channel, since=since)
        assert (result["recovered"], [p["data"] for p in result["publications"]]) == (True, ["missed"])
        await back.close()

        # ... after it (the publication's time + TTL, on this machine's clock, which
        # is the gateway's and the broker's), history no longer covers the gap.
        await asyncio.sleep(max(0.0, result["publications"][0]["time"] + TTL + 0.2 - time.time()))
        back = await Client.connect(gw)
        result = await back.ok("subscribe", channel=channel, since=since)
        assert (result["recovered"], result["publications"]) == (False, [])
        await back.close()
    finally:
        stop_node(gw)


@pytest.mark.parametrize("engine", ["redis", "nats"])
@run(60)
async def test_meta_ttl_expiry_starts_a_new_epoch(engine, request):
    url, server = broker_url(engine, request, f"?meta_ttl={META_TTL}")
    gw = start_node(url)
    try:
        channel = f"meta-{os.urandom(4).hex()}"  # namespace "": 100 publications of history, no TTL
        client = await Client.connect(gw)
        await client.ok("subscribe", channel=channel)
        await client.ok("publish", channel=channel, data="first")
        seen = await client.next("message")
        assert seen["offset"] == 1
        await client.close()
        since = {"offset": seen["offset"], "epoch": seen["epoch"]}

        await state_gone(engine, server, channel)
        back = await Client.connect(gw)
        result = await back.ok("subscribe", channel=channel, since=since)
        assert result["recovered"] is False and result["publications"] == []
        assert result["epoch"] != seen["epoch"]
        await back.ok("publish", channel=channel, data="again")
        again = await back.next("message")
        assert (again["offset"], again["epoch"]) == (1, result["epoch"])
        await back.close()
    finally:
        stop_node(gw)
