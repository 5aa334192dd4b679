"""examples/shell/publish.sh (bash and curl) against a real gateway running
examples/sockway.toml: what it publishes reaches real clients, and every failure says
why on stderr with a non-zero exit status."""

from __future__ import annotations

import json

import pytest
from example_support import EXAMPLES, ChannelsClient, chat_listener, run, token

from support import free_port, require_program

SCRIPT = str(EXAMPLES / "shell" / "publish.sh")


@pytest.fixture(scope="module", autouse=True)
def programs() -> None:
    require_program("bash", "apt-get install bash")
    require_program("curl", "apt-get install curl")


def publish(gw, *args: str, key: str | None = None, url: str | None = None):
    env = {"SOCKWAY_API_KEY": gw.key if key is None else key, "SOCKWAY_URL": url or gw.url}
    return run(["bash", SCRIPT, *args], env=env)


def test_publishes_to_the_chat(gw):
    text = token("sh") + ' "quotes", back\\slash, tab\t, new\nline, \x01, ünïcode ✓'
    with chat_listener(gw) as client:
        result = publish(gw, text)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["result"]["endpoint"] == "/chat"
        client.until(lambda m: m == text)


def test_publishes_json_to_a_channel(gw):
    with ChannelsClient(gw.ws_url + "/live/websocket", "news") as live:
        result = publish(gw, "-c", "news", "-j", '{"title": "from the shell", "n": [1, 2]}')
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["result"]["channel"] == "news"
        message, _ = live.until(lambda m: json.loads(m).get("type") == "message")
        assert json.loads(message)["data"] == {"title": "from the shell", "n": [1, 2]}


def test_wrong_key_fails_with_the_servers_message(gw):
    with chat_listener(gw) as client:
        text = token("wrong-key")
        result = publish(gw, text, key="not-the-key")
        assert result.returncode == 1
        assert result.stdout == ""
        assert "HTTP 401 unauthorized" in result.stderr
        assert "send the API key as 'Authorization: Bearer <key>'" in result.stderr
        # Nothing was published: a line sent afterwards is the next one the client sees.
        after = token("after")
        publish(gw, after)
        _, before = client.until(lambda m: m == after)
        assert text not in before


def test_gateway_errors_are_reported(gw):
    result = publish(gw, "-e", "/nope", "x")
    assert result.returncode == 1
    assert "HTTP 404 not_found): no broadcast endpoint '/nope'" in result.stderr
    result = publish(gw, "-c", "no spaces allowed", "x")
    assert result.returncode == 1 and "bad_channel" in result.stderr
    result = publish(gw, "-j", "{not json")
    assert result.returncode == 1 and "the body is not valid JSON" in result.stderr
    result = publish(gw, "x", url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "no answer from http://127.0.0.1:" in result.stderr


def test_usage(gw):
    result = publish(gw, "x", key="")
    assert result.returncode == 2 and "set SOCKWAY_API_KEY" in result.stderr
    result = publish(gw)
    assert result.returncode == 2 and "give exactly one MESSAGE" in result.stderr
    result = publish(gw, "-c", "a", "-e", "/chat", "x")
    assert result.returncode == 2 and "exclude each other" in result.stderr
    result = publish(gw, "-h")
    assert result.returncode == 0 and result.stdout.startswith("usage: publish.sh")
