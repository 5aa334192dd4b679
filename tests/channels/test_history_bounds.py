"""History and channels are bounded, on a running gateway (memory engine):

* a client flooding channels with ``[{},{},...]`` grows the process by about its
  history bounds in bytes, not by the parsed objects (docs/configuration.md:
  ``history_max_bytes``, ``node_history_max_bytes``);
* a channel keeps the newest publications whose data plus 500 bytes each fit in
  ``history_max_bytes``; recovering past what was dropped gives ``recovered: false``;
* past ``node_history_max_bytes`` the channel published to least recently loses its
  oldest publications first;
* past ``max_channels`` a new channel is refused (``channel_limit``; HTTP 503) while
  existing channels, and the channels the configuration names, keep working.
"""

from __future__ import annotations

import json

import aiohttp

from realtime import KEY, Api, ChannelsClient, RawWS, eventually, rss_kib, run
from support import config_gateway

ENTRY = 500
"""What a publication counts for besides its data (docs/configuration.md)."""


def _config(server: str = "", namespace: str = "") -> str:
    return f"""
[server]
shutdown_timeout = 1
{server}

[api]
key = "{KEY}"

[[endpoint]]
prefix = "/ch"
mode = "channels"

[[endpoint]]
prefix = "/chat"
mode = "broadcast"
history = 5

[[namespace]]
name = ""
publish = "open"
history_size = 1000
{namespace}

[[namespace]]
name = "nohist"
publish = "open"
"""


@run(timeout=90)
async def test_a_flood_of_empty_objects_costs_the_history_bounds():
    """13 MB of ``[{},{},...]`` in pieces of max_data_size (64 KiB) into 8 channels with
    history, through a real client: the process grows by less than twice the node's
    history budget plus 16 MiB (a piece being parsed, buffers), and no more once the
    client has left. (Kept as parsed objects, this flood cost 300 MiB that stayed.)"""
    budget = 4 << 20
    with config_gateway(_config(f"node_history_max_bytes = {budget}",
                                "history_max_bytes = 1048576")) as gw:
        piece = "[" + ",".join(["{}"] * ((65536 - 2) // 3)) + "]"
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            warm = await ChannelsClient.connect(gw, "/ch")
            await warm.ok("publish", channel="warm", data=json.loads(piece))
            await warm.close()
            base = rss_kib(gw.proc.pid)
            client = await ChannelsClient.connect(gw, "/ch")
            sent = 0
            for i in range(13_000_000 // len(piece) + 1):
                await client.send(f'{{"op":"publish","channel":"flood{i % 8}","id":"f{i}","data":{piece}}}')
                reply = await client.next("reply")
                assert reply["id"] == f"f{i}" and "result" in reply, reply
                sent += len(piece)
            assert sent >= 13_000_000
            grown = rss_kib(gw.proc.pid) - base
            await client.close()
            await eventually(lambda: _no_clients(api))
            left = rss_kib(gw.proc.pid) - base
            bound = (2 * budget + (16 << 20)) // 1024
            assert grown < bound, f"+{grown} KiB while flooding (bound {bound} KiB)"
            assert left < bound, f"+{left} KiB after the client left (bound {bound} KiB)"
            broker = (await api.stats())["broker"]
            assert broker["history_bytes"] <= budget
            assert broker["history_channels"] == 8


async def _no_clients(api: Api) -> bool:
    return (await api.stats())["connections"] == 0


@run()
async def test_history_is_trimmed_by_bytes_and_recovery_says_so():
    """history_max_bytes = 10100: publications of 2,002 bytes of JSON count 2,502 each,
    so the channel keeps the newest 4 of 10 (10,008 bytes). A client coming back from offset 0 gets
    those 4 and ``recovered: false``; from offset 6, exactly 7..10 and ``recovered:
    true``. The history query and the HTTP API say the same."""
    with config_gateway(_config(namespace="history_max_bytes = 10100")) as gw:
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            client = await ChannelsClient.connect(gw, "/ch")
            first = await client.ok("subscribe", channel="news")
            epoch = first["epoch"]
            await client.ok("unsubscribe", channel="news")
            for i in range(1, 11):
                await api("publish", channel="news", data=f"{i:02d}" + "x" * 1998)
            since_start = await client.ok("subscribe", channel="news", since={"offset": 0, "epoch": epoch})
            assert since_start["recovered"] is False
            assert [p["offset"] for p in since_start["publications"]] == [7, 8, 9, 10]
            assert since_start["publications"][0]["data"] == "07" + "x" * 1998
            await client.ok("unsubscribe", channel="news")
            since_six = await client.ok("subscribe", channel="news", since={"offset": 6, "epoch": epoch})
            assert since_six["recovered"] is True
            assert [p["offset"] for p in since_six["publications"]] == [7, 8, 9, 10]
            history = await client.ok("history", channel="news")
            assert [p["offset"] for p in history["publications"]] == [7, 8, 9, 10]
            result = await api("history", channel="news")
            assert [p["offset"] for p in result["publications"]] == [7, 8, 9, 10]
            assert (await api.stats())["broker"]["history_bytes"] == 4 * (2002 + ENTRY)
            await client.close()


@run()
async def test_the_node_budget_drops_the_least_recently_published_channel_first():
    """node_history_max_bytes = 30000; channels a, b, c, d get two publications of
    4,002 bytes of JSON each (9,004 counted per channel), in that order: d's push the
    total over the budget, and a (published to least recently) loses both of its own;
    b, c and d keep theirs. A client recovering a gets ``recovered: false``."""
    with config_gateway(_config("node_history_max_bytes = 30000")) as gw:
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            client = await ChannelsClient.connect(gw, "/ch")
            positions = {}
            for name in "abcd":
                positions[name] = (await client.ok("subscribe", channel=name))["epoch"]
            for name in "abcd":
                for i in range(2):
                    await api("publish", channel=name, data=f"{name}{i}" + "x" * 3998)
            kept = {}
            for name in "abcd":
                result = await api("history", channel=name)
                kept[name] = [p["offset"] for p in result["publications"]]
            assert kept == {"a": [], "b": [1, 2], "c": [1, 2], "d": [1, 2]}
            broker = (await api.stats())["broker"]
            assert broker["history_bytes"] == 3 * 2 * (4002 + ENTRY)
            assert broker["evicted_publications"] == 2
            for name in "abcd":
                await client.ok("unsubscribe", channel=name)
            again = await client.ok("subscribe", channel="a", since={"offset": 0, "epoch": positions["a"]})
            assert again["recovered"] is False and again["publications"] == []
            again = await client.ok("subscribe", channel="b", since={"offset": 0, "epoch": positions["b"]})
            assert again["recovered"] is True and [p["offset"] for p in again["publications"]] == [1, 2]
            await client.close()


@run()
async def test_new_channels_are_refused_at_max_channels_and_old_ones_keep_working():
    with config_gateway(_config("max_channels = 5")) as gw:
        async with aiohttp.ClientSession() as http:
            api = Api(http, gw)
            client = await ChannelsClient.connect(gw, "/ch")
            for i in range(5):
                await client.ok("subscribe", channel=f"ch{i}")
            reply = await client.request("subscribe", channel="ch5")
            assert reply["error"]["code"] == "channel_limit"
            assert "max_channels" in reply["error"]["message"]
            # Existing channels deliver.
            await api("publish", channel="ch2", data="still here")
            message = await client.next("message")
            assert (message["channel"], message["data"]) == ("ch2", "still here")
            # The application's subscribe command: 503 with the same code.
            status, body = await api.post("subscribe", {"conn": client.conn, "channel": "ch6"})
            assert status == 503 and body["error"]["code"] == "channel_limit"
            # A publication that would start a sixth channel with history, when every
            # channel held is subscribed to: refused too. One that keeps nothing is not.
            status, body = await api.post("publish", {"channel": "other", "data": 1})
            assert status == 503 and body["error"]["code"] == "channel_limit"
            await api("publish", channel="nohist:user1", data=1)
            # The broadcast endpoint's channel is named by the configuration: it works.
            chat = await RawWS.connect(gw.ws_url + "/chat/websocket")
            await chat.send_text("hello")
            assert await chat.recv_text() == "hello"
            await chat.close()
            # Room again once a channel is released.
            await client.ok("unsubscribe", channel="ch0")
            await client.ok("subscribe", channel="ch5")
            await api("publish", channel="ch5", data="new")
            message = await client.next("message")
            assert (message["channel"], message["data"]) == ("ch5", "new")
            # ch0 is kept only for its position: a new channel with history takes its place.
            await api("publish", channel="other", data=1)
            assert (await api.stats())["channels"]["refused_channels"] == 2
            await client.close()
