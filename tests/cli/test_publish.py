"""``sockway publish`` against a running gateway: through the HTTP API (the result
printed, a refusal with the server's message and status 1), through ZeroMQ PUSH and PUB,
to one connection (--conn) or a broadcast endpoint (--endpoint) (PUSH only: SUB runs no
command), a message as it is (--raw), stdin lines, --json,
through Redis (a cluster's broker), and usage errors (status 2)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from cli_support import API_KEY, ChannelClient, CliGateway, T, WsClient, broker_gateway, cli

from support import free_port


def channel_name() -> str:
    return f"pub-{uuid.uuid4().hex[:10]}"


def http(gw: CliGateway, key: str = API_KEY) -> list[str]:
    return ["--url", gw.url, "--key", key]


def test_http_publish_prints_the_result(gw: CliGateway) -> None:
    channel = channel_name()
    with ChannelClient(gw.ws + "/live/websocket") as client:
        start = client.subscribe(channel)
        result = cli("publish", channel, "hello ☃", *http(gw))
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        assert printed == {"channel": channel, "offset": start["offset"] + 1, "epoch": start["epoch"]}
        (message,) = client.messages(1)
        assert message["data"] == "hello ☃" and message["offset"] == printed["offset"]


def test_http_json(gw: CliGateway) -> None:
    channel = channel_name()
    with ChannelClient(gw.ws + "/live/websocket") as client:
        client.subscribe(channel)
        result = cli("publish", channel, '{"title": "hi", "n": [1, 2]}', "--json", *http(gw))
        assert result.returncode == 0, result.stderr
        assert client.messages(1)[0]["data"] == {"title": "hi", "n": [1, 2]}
        # Without --json the same text is a string.
        cli("publish", channel, '{"title": "hi"}', *http(gw))
        assert client.messages(1)[0]["data"] == '{"title": "hi"}'


def test_http_stdin_lines(gw: CliGateway) -> None:
    channel = channel_name()
    with ChannelClient(gw.ws + "/live/websocket") as client:
        client.subscribe(channel)
        result = cli("publish", channel, *http(gw), input="one\ntwo\n\nthree\n")
        assert result.returncode == 0, result.stderr
        printed = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(printed) == 3  # the empty line is skipped
        assert [p["offset"] for p in printed] == sorted(p["offset"] for p in printed)
        assert [m["data"] for m in client.messages(3)] == ["one", "two", "three"]


def test_http_stdin_json_lines(gw: CliGateway) -> None:
    channel = channel_name()
    with ChannelClient(gw.ws + "/live/websocket") as client:
        client.subscribe(channel)
        result = cli("publish", channel, "--json", *http(gw), input='{"a": 1}\n[2]\n"three"\n')
        assert result.returncode == 0, result.stderr
        assert [m["data"] for m in client.messages(3)] == [{"a": 1}, [2], "three"]


def test_key_from_the_environment(gw: CliGateway) -> None:
    channel = channel_name()
    result = cli("publish", channel, "x", env={"SOCKWAY_URL": gw.url, "SOCKWAY_API_KEY": API_KEY})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["channel"] == channel


def test_wrong_key(gw: CliGateway) -> None:
    result = cli("publish", channel_name(), "x", *http(gw, key="not-the-key"))
    assert result.returncode == 1
    assert result.stdout == ""
    # The server's own message, with its status and code.
    assert "refused: 401 unauthorized:" in result.stderr
    assert "API key" in result.stderr


def test_refusals_are_reported_and_the_rest_goes_on(gw: CliGateway) -> None:
    result = cli("publish", "--endpoint", "/nope", *http(gw), input="a\nb\n")
    assert result.returncode == 1
    assert result.stderr.count("refused: 404 not_found: no broadcast endpoint '/nope'") == 2
    result = cli("publish", "--conn", "nobody.1", "hi", *http(gw))
    assert result.returncode == 1
    assert "no open connection 'nobody.1'" in result.stderr


def test_gateway_unreachable() -> None:
    result = cli("publish", "news", "x", "--url", f"http://127.0.0.1:{free_port()}", "--key", "k")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("via", ["http", "push"])
def test_endpoint_broadcast(gw: CliGateway, via: str) -> None:
    mark = f"to everyone {uuid.uuid4().hex[:6]} via {via}"
    args = {"http": http(gw), "push": ["--zmq", gw.pull]}[via]
    with WsClient(gw.ws + "/quiet/websocket") as client:
        result = cli("publish", "--endpoint", "/quiet", mark, *args)
        assert result.returncode == 0, result.stderr
        assert client.recv(T) == mark
        if via == "http":
            assert json.loads(result.stdout)["endpoint"] == "/quiet"
        else:  # ZeroMQ gives no answer: the tool says what it sent where
            assert json.loads(result.stdout) == {
                "sent": {"op": "broadcast", "endpoint": "/quiet", "data": mark},
                "to": args[1], "socket": via.upper()}


@pytest.mark.parametrize("via", ["http", "push"])
def test_conn(gw: CliGateway, via: str) -> None:
    args = {"http": http(gw), "push": ["--zmq", gw.pull]}[via]
    with ChannelClient(gw.ws + "/live/websocket") as client:
        result = cli("publish", "--conn", client.conn, '{"private": true}', "--json", *args)
        assert result.returncode == 0, result.stderr
        frame = client.next_frame(lambda f: f.get("type") == "message")
        assert frame == {"type": "message", "data": {"private": True}}


@pytest.mark.parametrize("option", ["--conn", "--endpoint"])
def test_pub_runs_no_command(gw: CliGateway, option: str) -> None:
    """The gateway's SUB socket runs no command: the tool says so instead of sending
    something that would reach browsers as text."""
    result = cli("publish", option, "/quiet" if option == "--endpoint" else "a.1", "x", "--zmq", gw.sub, "--pub")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "the gateway's SUB socket (--pub) runs no command" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("via", ["push", "pub"])
def test_raw(gw: CliGateway, via: str) -> None:
    """--raw: one frame, exactly as given, byte for byte to [zeromq] default (/plain)."""
    args = ["--zmq", gw.pull] if via == "push" else ["--zmq", gw.sub, "--pub"]
    mark = uuid.uuid4().hex[:6]
    messages = [f'{{"a": 1, "b": [1, 2], "mark": "{mark}"}}', f'"quoted {mark}"']
    with WsClient(gw.ws + "/plain/websocket") as client:
        for message in messages:
            result = cli("publish", "--raw", message, *args)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == {"sent": message, "to": args[1], "socket": via.upper()}
        assert [client.recv(T) for _ in messages] == messages
        result = cli("publish", "--raw", *args, input=f"line 1 {mark}\nline 2 {mark}\n")
        assert result.returncode == 0, result.stderr
        assert [client.recv(T) for _ in range(2)] == [f"line 1 {mark}", f"line 2 {mark}"]


@pytest.mark.parametrize("via", ["push", "pub"])
def test_zmq_channel(gw: CliGateway, via: str) -> None:
    channel = channel_name()
    args = ["--zmq", gw.pull] if via == "push" else ["--zmq", gw.sub, "--pub"]
    with ChannelClient(gw.ws + "/live/websocket") as client:
        client.subscribe(channel)
        result = cli("publish", channel, "via zeromq", *args)
        assert result.returncode == 0, result.stderr
        assert client.messages(1)[0]["data"] == "via zeromq"
        result = cli("publish", channel, "--json", *args, input='{"n": 1}\n{"n": 2}\n')
        assert result.returncode == 0, result.stderr
        assert [m["data"] for m in client.messages(2)] == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("args, message", [
    (["news", "x"], "say how to reach the gateway"),
    (["x", "--url", "http://127.0.0.1:1"], "needs --key"),
    ([], "give a CHANNEL"),
    (["news", "not json", "--json", "--url", "http://127.0.0.1:1", "--key", "k"], "is not JSON"),
    (["news", "x", "--zmq", "not-an-address"], "bad ZeroMQ address"),
    (["--conn", "a.1", "--endpoint", "/chat", "x", "--zmq", "tcp://127.0.0.1:1"], "not allowed with argument"),
    (["news", "x", "--url", "http://127.0.0.1:1", "--zmq", "tcp://127.0.0.1:1"], "not allowed with argument"),
    (["--raw", "x", "--url", "http://127.0.0.1:1", "--key", "k"], "--raw sends one ZeroMQ frame"),
    (["--raw", "news", "x", "--zmq", "tcp://127.0.0.1:1"], "--raw takes DATA alone"),
    (["--raw", "x", "--json", "--zmq", "tcp://127.0.0.1:1"], "--raw takes DATA alone"),
])
def test_usage_errors(args: list[str], message: str) -> None:
    result = cli("publish", *args, env={"SOCKWAY_URL": "", "SOCKWAY_API_KEY": ""})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- through Redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_gw(tmp_path_factory) -> Iterator[tuple[CliGateway, str]]:
    """A gateway on the Redis broker (a redis-server of its own) and the broker URL."""
    with broker_gateway("redis", tmp_path_factory.mktemp("redis")) as found:
        yield found


def test_redis(redis_gw: tuple[CliGateway, str]) -> None:
    gw, url = redis_gw
    channel = channel_name()
    with ChannelClient(gw.ws + "/live/websocket") as client:
        client.subscribe(channel)
        result = cli("publish", channel, "via redis", "--redis", url)
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        assert printed["channel"] == channel
        message = client.messages(1)[0]
        assert message["data"] == "via redis" and message["offset"] == printed["offset"]
        result = cli("publish", "--conn", client.conn, "to you", "--redis", url)
        assert result.returncode == 0, result.stderr
        assert client.next_frame(lambda f: f.get("type") == "message") == {"type": "message", "data": "to you"}
    result = cli("publish", "--endpoint", "/nope", "x", "--redis", url)
    assert result.returncode == 1
    assert "refused: 404" in result.stderr


def test_redis_unreachable() -> None:
    result = cli("publish", "news", "x", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def nats_gw(tmp_path_factory) -> Iterator[tuple[CliGateway, str]]:
    """A gateway on the NATS broker (a nats-server of its own, with JetStream)."""
    with broker_gateway("nats", tmp_path_factory.mktemp("nats")) as found:
        yield found


def test_nats(nats_gw: tuple[CliGateway, str]) -> None:
    gw, url = nats_gw
    channel = channel_name()
    with ChannelClient(gw.ws + "/live/websocket") as client:
        client.subscribe(channel)
        result = cli("publish", channel, "via nats", "--nats", url)
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        assert printed["channel"] == channel
        message = client.messages(1)[0]
        assert message["data"] == "via nats" and message["offset"] == printed["offset"]
    result = cli("publish", "--endpoint", "/nope", "x", "--nats", url)
    assert result.returncode == 1
    assert "refused: 404" in result.stderr


def test_nats_unreachable() -> None:
    result = cli("publish", "news", "x", "--nats", f"nats://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr
