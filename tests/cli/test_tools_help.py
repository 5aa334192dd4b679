"""The help texts of the debugging tools: every option, the modes and the exit statuses
are explained where a user looks first, with examples that run against ``make demo``."""

from __future__ import annotations

import pytest
from cli_support import cli


def test_main_help_lists_the_tools() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for tool in ("cat", "publish", "tail"):
        assert f"\n    {tool} " in result.stdout


@pytest.mark.parametrize("tool, expected", [
    ("cat", ["--transport", "xhr-streaming", "jsonp-polling", "--header", "--origin", "--subprotocol",
             "--token", "--jsonl", "--no-input", "--count", "--timeout", "--linger", "--binary",
             "/close [code] [reason]", "/quit", "~/.sockway_history", "exit status:",
             "1 if the connection", "2 for a usage error", "3 if", "sockway cat ws://127.0.0.1:8080/echo/websocket"]),
    ("publish", ["--conn", "--endpoint", "--json", "--url", "--zmq", "--pub", "--key", "SOCKWAY_API_KEY",
                 "stdin", "Exit status: 0", "2 for a usage error", "tcp://127.0.0.1:5557"]),
    ("tail", ["events", "channel", "--url", "--key", "--zmq", "--since OFFSET:EPOCH", "--count", "--timeout",
              "--endpoint", "--type", "--transport", "Exit status: 0"]),
])
def test_tool_help(tool: str, expected: list[str]) -> None:
    result = cli(tool, "--help")
    assert result.returncode == 0
    assert result.stderr == ""
    for text in expected:
        assert text in result.stdout, f"{tool} --help does not mention {text!r}"
    assert "``" not in result.stdout  # no reStructuredText markup in a terminal


@pytest.mark.parametrize("tool", ["cat", "publish", "tail"])
def test_short_help_flag(tool: str) -> None:
    assert cli(tool, "-h").stdout == cli(tool, "--help").stdout


def test_unknown_option_is_a_usage_error() -> None:
    for tool in ("cat", "publish", "tail"):
        result = cli(tool, "x", "--no-such-option")
        assert result.returncode == 2
        assert result.stderr.startswith("usage: sockway")
        assert "error:" in result.stderr
