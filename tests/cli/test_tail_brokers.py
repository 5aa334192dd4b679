"""``sockway tail`` through a cluster's broker (``--redis``, ``--nats``): a channel's
publications, joins and leaves from every node, and the application events the nodes
write, watched without taking any from the workers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from cli_support import ChannelClient, CliGateway, T, WsClient, background, broker_gateway, cli

from support import free_port


@pytest.fixture(scope="module", params=["redis", "nats"])
def cluster(request, tmp_path_factory) -> Iterator[tuple[str, CliGateway, str]]:
    """A gateway on its own Redis or NATS with application events on."""
    with broker_gateway(request.param, tmp_path_factory.mktemp(request.param), "&events=on") as (gw, url):
        yield request.param, gw, url


def wait_watching(tail) -> None:
    """Until tail says it is subscribed (what happens before is not its to see)."""
    deadline = time.monotonic() + T
    while "watching" not in tail.stderr_text:
        assert tail.proc.poll() is None and time.monotonic() < deadline, tail.stderr_text
        time.sleep(0.05)


def test_channel_messages_joins_and_leaves(cluster) -> None:
    engine, gw, url = cluster
    channel = f"room:{uuid.uuid4().hex[:8]}"
    with background("tail", "channel", channel, f"--{engine}", url, "--count", "5", "--timeout", "10") as tail:
        wait_watching(tail)
        with ChannelClient(gw.ws + "/live/websocket") as client:
            client.subscribe(channel)  # a join
            for text in ("one", "two"):
                result = cli("publish", channel, text, f"--{engine}", url)
                assert result.returncode == 0, result.stderr
            result = cli("publish", channel, '{"n": 3}', "--json", f"--{engine}", url)
            assert result.returncode == 0, result.stderr
            conn = client.conn
        # the client is gone: a leave
        assert tail.wait(15) == 0, tail.stderr_text
        items = [json.loads(line) for line in tail.rest()]
    assert [i["type"] for i in items] == ["join", "message", "message", "message", "leave"], items
    assert items[0]["conn"] == conn and items[-1]["conn"] == conn
    messages = items[1:4]
    assert [m["data"] for m in messages] == ["one", "two", {"n": 3}]
    offsets = [m["offset"] for m in messages]
    assert offsets == list(range(offsets[0], offsets[0] + 3))
    assert {m["channel"] for m in messages} == {channel} and len({m["epoch"] for m in messages}) == 1


def test_events_are_watched_not_taken(cluster) -> None:
    """tail sees open, message, close of an app connection; a worker started afterwards
    still gets every one of them (Redis: its consumer group reads the stream from the
    start; NATS: the durable consumer's stream is untouched)."""
    engine, gw, url = cluster
    with background("tail", "events", f"--{engine}", url, "--count", "3", "--timeout", "10") as tail:
        wait_watching(tail)
        with WsClient(gw.ws + "/app/websocket") as ws:
            ws.send("hello worker")
        assert tail.wait(15) == 0, tail.stderr_text
        events = [json.loads(line) for line in tail.rest()]
    assert [e["type"] for e in events] == ["open", "message", "close"], events
    assert events[1]["data"] == "hello worker"
    conn = events[0]["conn"]
    ids = [e["id"] for e in events]

    prefix = url.split("prefix=")[1].split("&")[0]
    if engine == "redis":
        from sockway.app_redis import RedisWorker

        worker = RedisWorker(url.split("?")[0], prefix=prefix, group=f"g{uuid.uuid4().hex[:6]}", block=0.2)
    else:
        from sockway.app_nats import NatsWorker

        worker = NatsWorker(url.split("?")[0], prefix=prefix)
    got: list[dict] = []
    worker.on("*")(lambda event, reply: got.append(event))
    try:
        worker.run(timeout=3, max_events=10)
    finally:
        if engine == "redis":
            worker.close()
    mine = [e for e in got if e.get("conn") == conn]
    assert [e["id"] for e in mine] == ids


def test_errors() -> None:
    for args, code, text in (
        (["channel", "x", "--redis", "http://nope"], 2, "--redis takes a redis:// URL"),
        (["channel", "--nats", "nats://127.0.0.1:1"], 2, "give the channel NAME"),
        (["channel", "x", "--nats", "nats://127.0.0.1:1", "--since", "1:abc"], 2, "--since needs --url"),
        (["events", "--redis", "redis://127.0.0.1:1/0", "--zmq", "tcp://127.0.0.1:1"], 2, "give one of"),
        (["events", "--redis", f"redis://127.0.0.1:{free_port()}/0"], 1, "cannot reach Redis"),
        (["events", "--nats", f"nats://127.0.0.1:{free_port()}"], 1, "cannot reach NATS"),
        (["channel", "x", "--redis", f"redis://127.0.0.1:{free_port()}/0"], 1, "cannot reach redis"),
    ):
        result = cli("tail", *args, timeout=30)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
