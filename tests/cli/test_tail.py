"""``sockway tail`` against a running gateway: ``tail events --url --key`` (the admin
stream, which sees every event while a ZeroMQ worker still gets them all), ``tail events
--zmq`` (a PULL socket on the gateway's PUSH), ``tail channel NAME`` with ``--since``
recovery, live messages, ``--count`` and ``--timeout``, and the errors."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import zmq
from cli_support import API_KEY, CliGateway, T, WsClient, api, background, cli, cli_gateway, connections

from support import free_port


def channel_name() -> str:
    return f"tail-{uuid.uuid4().hex[:10]}"


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture
def worker(push_gw: CliGateway) -> Iterator[zmq.Socket]:
    """An application worker PULLing events from the gateway's PUSH socket."""
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.connect(push_gw.push)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        context.term()


def drain_until(sock: zmq.Socket, wanted: set[str], timeout: float = T) -> dict[str, dict]:
    """Events from ``sock`` by id, until every id in ``wanted`` has come."""
    got: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while not wanted <= got.keys():
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            raise AssertionError(f"the worker did not get {sorted(wanted - got.keys())}")
        event = json.loads(sock.recv())
        got[event["id"]] = event
    return got


def churn_until_done(tail, url: str, timeout: float = 15) -> None:
    """Open and close connections to ``url`` (each makes events) until ``tail`` ends:
    a watcher sees only what happens after it is connected, and nothing says when."""
    deadline = time.monotonic() + timeout
    while tail.proc.poll() is None:
        assert time.monotonic() < deadline, f"tail did not end; stderr: {tail.stderr_text!r}"
        with WsClient(url):
            pass
        time.sleep(0.1)


# -- tail events --url ------------------------------------------------------------------------------


def test_events_url_beside_a_zeromq_worker(push_gw: CliGateway, worker: zmq.Socket) -> None:
    with background("tail", "events", "--url", push_gw.url, "--key", API_KEY, "--endpoint", "/app",
                    "--count", "4", "--timeout", "15") as tail:
        churn_until_done(tail, push_gw.ws + "/app/websocket")
        assert tail.wait() == 0, tail.stderr_text
        seen = [json.loads(line) for line in tail.rest()]
    assert len(seen) == 4
    assert {e["type"] for e in seen} <= {"open", "close"}
    assert all(e["endpoint"] == "/app" for e in seen)
    # The worker still got every one of them, the same.
    got = drain_until(worker, {e["id"] for e in seen})
    for event in seen:
        assert got[event["id"]] == event
    # An open event carries the request; a close event the code.
    opens = [e for e in seen if e["type"] == "open"]
    closes = [e for e in seen if e["type"] == "close"]
    assert opens and closes
    assert opens[0]["request"]["path"] == "/app/websocket"
    assert all(e["code"] == 1000 for e in closes)


def test_events_url_filters(push_gw: CliGateway) -> None:
    with background("tail", "events", "--url", push_gw.url, "--key", API_KEY, "--endpoint", "/live",
                    "--type", "close", "--count", "2", "--timeout", "15") as tail:
        deadline = time.monotonic() + 15
        while tail.proc.poll() is None:
            assert time.monotonic() < deadline
            for prefix in ("/app", "/live"):
                with WsClient(push_gw.ws + prefix + "/websocket"):
                    pass
            time.sleep(0.1)
        assert tail.wait() == 0
        seen = [json.loads(line) for line in tail.rest()]
    assert [(e["type"], e["endpoint"]) for e in seen] == [("close", "/live")] * 2


def test_events_url_wrong_key(gw: CliGateway) -> None:
    result = cli("tail", "events", "--url", gw.url, "--key", "wrong", "--timeout", "1")
    assert result.returncode == 1
    assert "the gateway refused: HTTP 401" in result.stderr
    assert "API key" in result.stderr  # the gateway's own explanation


def test_events_url_without_api_key_configured(testserver) -> None:
    result = cli("tail", "events", "--url", testserver.url, "--key", "anything", "--timeout", "1")
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr and "needs an API key" in result.stderr


def test_events_url_unreachable() -> None:
    result = cli("tail", "events", "--url", f"http://127.0.0.1:{free_port()}", "--key", "k", "--timeout", "1")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


# -- tail events --zmq ----------------------------------------------------------------------------


def test_events_zmq() -> None:
    """A PULL socket of its own on a gateway no worker reads from: events queued before it
    connected are delivered to it (PUSH keeps them), in order."""
    with cli_gateway(push=True) as fresh:
        with WsClient(fresh.ws + "/app/websocket") as client:
            client.send("hello app")
        result = cli("tail", "events", "--zmq", fresh.push, "--count", "3", "--timeout", "10")
        assert result.returncode == 0, result.stderr
        events = json_lines(result.stdout)
        assert [e["type"] for e in events] == ["open", "message", "close"]
        assert len({e["conn"] for e in events}) == 1
        assert [e["seq"] for e in events] == [1, 2, 3]
        assert events[1]["data"] == "hello app"
        # Nothing more: --timeout ends it quietly.
        started = time.monotonic()
        result = cli("tail", "events", "--zmq", fresh.push, "--timeout", "0.5")
        assert result.returncode == 0 and result.stdout == ""
        assert time.monotonic() - started < 5


# -- tail channel ------------------------------------------------------------------------------------


def publish(gw: CliGateway, channel: str, *data: object) -> list[dict]:
    return [api(gw, "publish", channel=channel, data=d) for d in data]


def test_channel_since_recovers_then_count_stops(gw: CliGateway) -> None:
    channel = channel_name()
    results = publish(gw, channel, "m1", "m2", {"m": 3}, "m4", "m5")
    epoch = results[0]["epoch"]
    since = f"{results[1]['offset']}:{epoch}"
    result = cli("tail", "channel", channel, "--url", gw.ws + "/live/websocket", "--since", since,
                 "--count", "3", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert [(m["offset"], m["data"]) for m in lines] == [(r["offset"], d) for r, d in
                                                         zip(results[2:], [{"m": 3}, "m4", "m5"], strict=True)]
    for line in lines:
        assert line["type"] == "message" and line["channel"] == channel and line["epoch"] == epoch
        assert line["recovered"] is True and isinstance(line["time"], float)
    # --count stops inside the recovered publications too.
    result = cli("tail", "channel", channel, "--url", gw.ws + "/live/websocket", "--since", since, "-n", "1")
    assert [m["data"] for m in json_lines(result.stdout)] == [{"m": 3}]


@pytest.mark.parametrize("transport", [None, "xhr-streaming", "eventsource"])
def test_channel_recovered_then_live(gw: CliGateway, transport: str | None) -> None:
    channel = channel_name()
    (first,) = publish(gw, channel, "before")
    since = f"{first['offset'] - 1}:{first['epoch']}"
    url = ["--url", gw.ws + "/live/websocket"] if transport is None else \
        ["--url", gw.url + "/live", "--transport", transport]
    with background("tail", "channel", channel, *url, "--since", since, "--count", "3",
                    "--timeout", "15") as tail:
        (recovered,) = tail.json_lines(1)
        assert recovered["data"] == "before" and recovered["recovered"] is True
        # The recovered message comes with the subscription's reply: it is subscribed now.
        later = publish(gw, channel, "live 1", "live 2")
        live = tail.json_lines(2)
        assert tail.wait() == 0
    assert [m["data"] for m in live] == ["live 1", "live 2"]
    assert [m["offset"] for m in live] == [r["offset"] for r in later]
    assert all(m["type"] == "message" and "recovered" not in m for m in live)


def test_channel_gap_not_covered(gw: CliGateway) -> None:
    channel = channel_name()
    publish(gw, channel, "x")
    result = cli("tail", "channel", channel, "--url", gw.ws + "/live/websocket", "--since", "1:notthisepoch",
                 "--timeout", "0.5")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "history does not cover the gap since 1:notthisepoch; showing live messages only" in result.stderr


def test_channel_history_too_short(gw: CliGateway) -> None:
    """The channel keeps 50 publications: asking from offset 1 after 55 cannot be
    recovered; the partial history is not shown as if it were complete."""
    from sockway.app import Client

    channel = channel_name()
    results = Client(gw.url, API_KEY).commands([{"op": "publish", "channel": channel, "data": i}
                                                for i in range(55)])
    epoch = results[0]["result"]["epoch"]
    result = cli("tail", "channel", channel, "--url", gw.ws + "/live/websocket", "--since", f"1:{epoch}",
                 "--timeout", "0.5")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "history does not cover the gap" in result.stderr
    # From offset 10 on, it can.
    result = cli("tail", "channel", channel, "--url", gw.ws + "/live/websocket", "--since", f"10:{epoch}",
                 "--timeout", "0.5")
    assert [m["data"] for m in json_lines(result.stdout)] == list(range(10, 55))


def test_channel_timeout_without_messages(gw: CliGateway) -> None:
    started = time.monotonic()
    result = cli("tail", "channel", channel_name(), "--url", gw.ws + "/live/websocket", "--timeout", "0.5")
    assert result.returncode == 0 and result.stdout == ""
    assert time.monotonic() - started < 5


def test_channel_not_a_channels_endpoint(gw: CliGateway) -> None:
    result = cli("tail", "channel", "news", "--url", gw.ws + "/echo/websocket", "--timeout", "5")
    assert result.returncode == 1
    assert "does not speak the channels protocol" in result.stderr


def test_channel_cannot_connect() -> None:
    result = cli("tail", "channel", "news", "--url", f"ws://127.0.0.1:{free_port()}/live/websocket")
    assert result.returncode == 1
    assert "could not connect" in result.stderr


def test_channel_closed_by_the_server(gw: CliGateway) -> None:
    with background("tail", "channel", channel_name(), "--url", gw.ws + "/live/websocket",
                    "--timeout", "20") as tail:
        deadline = time.monotonic() + T
        while True:
            found = [c for c in connections(gw, "/live") if c["channels"]]
            if found:
                break
            assert time.monotonic() < deadline, "tail never subscribed"
            time.sleep(0.05)
        api(gw, "close", conn=found[0]["conn"], code=4000, reason="maintenance")
        assert tail.wait() == 1
        assert "closed 4000 maintenance" in tail.stderr_text


@pytest.mark.parametrize("args, message", [
    (["channel", "--url", "ws://127.0.0.1:1/live/websocket"], "give NAME and --url"),
    (["channel", "news"], "give NAME and --url"),
    (["channel", "news", "--url", "ws://127.0.0.1:1/x", "--since", "soon"], "--since takes OFFSET:EPOCH"),
    (["channel", "news", "--url", "http://127.0.0.1:1/x", "--transport", "smoke"], "invalid choice"),
    (["events"], "give --url"),
    (["events", "--url", "http://127.0.0.1:1"], "give --key"),
    (["events", "--zmq", "nonsense"], "bad ZeroMQ address"),
    (["logs"], "invalid choice"),
    ([], "the following arguments are required"),
])
def test_usage_errors(args: list[str], message: str) -> None:
    result = cli("tail", *args, env={"SOCKWAY_API_KEY": ""})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
