"""``sockway cat`` in pipe mode against a running gateway: raw WebSocket and every SockJS
transport, --jsonl records, binary messages, headers, origins, subprotocols, tokens,
--count/--timeout and every exit status (0 normal, 1 cannot connect, 2 usage, 3 closed
by the server with another code)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid

import pytest
import zmq
from cli_support import (
    ALLOWED_ORIGIN,
    CliGateway,
    T,
    api,
    background,
    cli,
    token,
    wait_connection,
)

from support import free_port

TRANSPORTS = ["websocket", "xhr-streaming", "xhr-polling", "eventsource", "htmlfile", "jsonp-polling"]
# ASCII, non-ASCII, JSON's special characters, what SockJS must escape, an empty message.
LINES = ["hello", "wörld ☃ 😀", 'a "quoted" \\ backslash', '{"json": [1, 2]}', "sep\u2028ara\u2029tors", ""]
TEXT = "".join(line + "\n" for line in LINES)


def lines_of(stdout: str) -> list[str]:
    """stdout split on newlines only (str.splitlines would split at U+2028 too)."""
    assert stdout.endswith("\n") or stdout == "", repr(stdout)
    return stdout.split("\n")[:-1]


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in lines_of(stdout)]


# -- pipe mode over every transport ---------------------------------------------------------


def test_pipe_mode_raw_websocket(gw: CliGateway) -> None:
    result = cli("cat", gw.ws + "/echo/websocket", "--linger", "0.5", input=TEXT)
    assert result.returncode == 0, result.stderr
    assert lines_of(result.stdout) == LINES
    assert result.stderr == ""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pipe_mode_sockjs(gw: CliGateway, transport: str) -> None:
    started = time.monotonic()
    result = cli("cat", gw.url + "/echo", "--transport", transport, "--linger", "0.5", input=TEXT)
    assert result.returncode == 0, result.stderr
    assert lines_of(result.stdout) == LINES
    # It ends --linger after the last line, not at a timeout of its own.
    assert time.monotonic() - started < 8


def test_pipe_mode_ends_after_linger_when_replies_come_first(gw: CliGateway) -> None:
    """The reply to the last line may arrive before the end of input is read: the tool
    must still stop --linger seconds after the end of input (it used to wait forever)."""
    for _ in range(5):
        result = cli("cat", gw.ws + "/echo/websocket", "--jsonl", "--linger", "0.2", input="a\nb\n", timeout=15)
        assert result.returncode == 0, result.stderr
        assert [r["dir"] for r in records(result.stdout)].count("in") == 2


def test_pipe_mode_without_newline_at_the_end(gw: CliGateway) -> None:
    result = cli("cat", gw.ws + "/echo/websocket", "--linger", "0.3", input="one\ntwo")
    assert result.returncode == 0, result.stderr
    assert lines_of(result.stdout) == ["one", "two"]


def test_stdout_closed_early_is_not_an_error(gw: CliGateway, tmp_path) -> None:
    """``sockway cat ... | head -1``: the reader goes away, cat stops quietly."""
    script = tmp_path / "head.sh"
    script.write_text(f'printf "a\\nb\\nc\\n" | "{sys.executable}" -m sockway cat {gw.ws}/echo/websocket '
                      '--linger 0.5 | head -n 1; echo "status ${PIPESTATUS[1]}" >&2\n')
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert result.stdout == "a\n"
    assert result.stderr.strip().endswith("status 0"), result.stderr
    assert "Broken pipe" not in result.stderr


# -- --jsonl ------------------------------------------------------------------------------------


def test_jsonl_records(gw: CliGateway) -> None:
    before = time.time()
    result = cli("cat", gw.ws + "/echo/websocket", "--jsonl", "--linger", "0.3", input="first\nsecond ☃\n")
    after = time.time()
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    assert recs[0] == {"t": recs[0]["t"], "dir": "open", "url": gw.ws + "/echo/websocket", "transport": "websocket"}
    assert recs[-1] == {"t": recs[-1]["t"], "dir": "close", "code": 1000, "reason": "", "by": "client"}
    assert [r["data"] for r in recs if r["dir"] == "out"] == ["first", "second ☃"]
    assert [r["data"] for r in recs if r["dir"] == "in"] == ["first", "second ☃"]
    assert {r["dir"] for r in recs} == {"open", "out", "in", "close"}
    times = [r["t"] for r in recs]
    assert all(isinstance(t, float) for t in times)
    assert times == sorted(times)
    assert before <= times[0] and times[-1] <= after
    # Each echo comes after its message went out; the close at least --linger later.
    outs = [r["t"] for r in recs if r["dir"] == "out"]
    ins = [r["t"] for r in recs if r["dir"] == "in"]
    assert all(i >= o for o, i in zip(outs, ins, strict=True))
    assert recs[-1]["t"] - ins[-1] >= 0.2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_jsonl_sockjs_order(gw: CliGateway, transport: str) -> None:
    """Over every transport, each echo is recorded after the message that caused it."""
    result = cli("cat", gw.url + "/echo", "-t", transport, "--jsonl", "--linger", "0.5", input="a\nb\nc\n")
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    assert recs[0]["transport"] == transport
    sequence = [(r["dir"], r["data"]) for r in recs if r["dir"] in ("in", "out")]
    for data in "abc":
        assert sequence.index(("out", data)) < sequence.index(("in", data)), sequence
    assert [d for k, d in sequence if k == "in"] == ["a", "b", "c"]


@pytest.mark.parametrize("transport", [None, *TRANSPORTS])
def test_jsonl_server_close_code(testserver, transport: str | None) -> None:
    """The SockJS test server's /close closes every session with 3000 "Go away!"."""
    if transport is None:
        args = [testserver.ws_url + "/close/websocket"]
    else:
        args = [testserver.url + "/close", "--transport", transport]
    result = cli("cat", *args, "--jsonl", "--no-input", "--timeout", "5")
    assert result.returncode == 3, (result.stdout, result.stderr)
    recs = records(result.stdout)
    assert [r["dir"] for r in recs] == ["open", "close"]
    assert recs[1]["code"] == 3000 and recs[1]["reason"] == "Go away!" and "by" not in recs[1]
    assert "closed by the server: 3000 Go away!" in result.stderr
    assert "Unclosed" not in result.stderr  # the SockJS client released its HTTP session


# -- binary --------------------------------------------------------------------------------------


def test_binary_messages(gw: CliGateway) -> None:
    result = cli("cat", gw.ws + "/echo/websocket", "--binary", "--jsonl", "--linger", "0.3", input="bin ☃\n")
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    out = [r for r in recs if r["dir"] == "out"]
    got = [r for r in recs if r["dir"] == "in"]
    assert out == [{"t": out[0]["t"], "dir": "out", "data": "bin ☃", "binary": True}]
    assert got == [{"t": got[0]["t"], "dir": "in", "data": base64.b64encode("bin ☃".encode()).decode(),
                    "binary": True}]
    assert base64.b64decode(got[0]["data"]).decode() == "bin ☃"


def test_binary_messages_plain_output(gw: CliGateway) -> None:
    result = cli("cat", gw.ws + "/echo/websocket", "--binary", "--linger", "0.3", input="abc\n")
    assert result.returncode == 0, result.stderr
    assert lines_of(result.stdout) == ["[binary 3 bytes] YWJj"]


# -- headers, origin, subprotocol, token ------------------------------------------------------


@pytest.mark.parametrize("transport", [None, "websocket", "xhr-polling"])
def test_headers_reach_the_application(push_gw: CliGateway, transport: str | None) -> None:
    """-H headers (and --origin) are in the request the application sees in its open event."""
    marker = uuid.uuid4().hex
    context = zmq.Context()
    worker = context.socket(zmq.PULL)
    worker.connect(push_gw.push)
    try:
        target = [push_gw.ws + "/app/websocket"] if transport is None else [push_gw.url + "/app", "-t", transport]
        result = cli("cat", *target, "-H", f"X-Trace-Id: {marker}", "--header", "X-Other:  spaced value ",
                     "--origin", ALLOWED_ORIGIN, "--no-input", "--timeout", "0.5")
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + T
        while True:
            assert worker.poll(int(max(0, deadline - time.monotonic()) * 1000)), "no open event with the header"
            event = json.loads(worker.recv())
            headers = {k.lower(): v for k, v in event.get("request", {}).get("headers", {}).items()}
            if event["type"] == "open" and headers.get("x-trace-id") == marker:
                break
        assert headers["x-other"] == "spaced value"
        assert headers["origin"] == ALLOWED_ORIGIN
    finally:
        worker.close(linger=0)
        context.term()


@pytest.mark.parametrize("target", ["raw", "websocket", "xhr-streaming", "jsonp-polling"])
def test_origin_refused(gw: CliGateway, target: str) -> None:
    args = [gw.ws + "/echo/websocket"] if target == "raw" else [gw.url + "/echo", "-t", target]
    result = cli("cat", *args, "--origin", "https://evil.example", "--no-input", "--timeout", "5")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "could not connect" in result.stderr
    assert "HTTP 403" in result.stderr and "Origin not allowed" in result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr


@pytest.mark.parametrize("target", ["raw", "xhr-streaming"])
def test_origin_allowed(gw: CliGateway, target: str) -> None:
    args = [gw.ws + "/echo/websocket"] if target == "raw" else [gw.url + "/echo", "-t", target]
    result = cli("cat", *args, "--origin", ALLOWED_ORIGIN, "--linger", "0.3", input="from an allowed page\n")
    assert result.returncode == 0, result.stderr
    assert lines_of(result.stdout) == ["from an allowed page"]


def test_subprotocol_negotiated(gw: CliGateway) -> None:
    result = cli("cat", gw.ws + "/proto/websocket", "-s", "chat.v9", "-s", "chat.v1", "--jsonl",
                 "--linger", "0.3", input="hi\n")
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    assert recs[0]["subprotocol"] == "chat.v1"
    assert [r["data"] for r in recs if r["dir"] == "in"] == ["hi"]
    # Both offered: the server's order of preference wins.
    result = cli("cat", gw.ws + "/proto/websocket", "--subprotocol", "chat.v1", "--subprotocol", "chat.v2",
                 "--jsonl", "--no-input", "--timeout", "0.3")
    assert records(result.stdout)[0]["subprotocol"] == "chat.v2"


def test_subprotocol_none_in_common(gw: CliGateway) -> None:
    result = cli("cat", gw.ws + "/proto/websocket", "-s", "nothing.known", "--jsonl", "--linger", "0.3",
                 input="still echoed\n")
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    assert "subprotocol" not in recs[0]
    assert [r["data"] for r in recs if r["dir"] == "in"] == ["still echoed"]


@pytest.mark.parametrize("target", ["raw", "xhr-polling", "websocket"])
def test_token(gw: CliGateway, target: str) -> None:
    args = [gw.ws + "/secure/websocket"] if target == "raw" else [gw.url + "/secure", "-t", target]
    ok = cli("cat", *args, "--token", token("alice"), "--linger", "0.3", input="let me in\n")
    assert ok.returncode == 0, ok.stderr
    assert lines_of(ok.stdout) == ["let me in"]

    missing = cli("cat", *args, "--no-input", "--timeout", "5")
    assert missing.returncode == 3, (missing.stdout, missing.stderr)
    assert "closed by the server: 4001" in missing.stderr

    expired = cli("cat", *args, "--token", token("alice", ttl=-60), "--no-input", "--timeout", "5")
    assert expired.returncode == 3
    assert "closed by the server: 4001" in expired.stderr

    forged = cli("cat", *args, "--token", token("alice", secret="not-the-secret-0123456789abcdef0"),
                 "--no-input", "--timeout", "5")
    assert forged.returncode == 3
    assert "closed by the server: 4001" in forged.stderr


# -- --count and --timeout ---------------------------------------------------------------------


def test_count(gw: CliGateway) -> None:
    marks = [f"count-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    for mark in marks:
        api(gw, "broadcast", endpoint="/chat", data=mark)
    # /chat replays its history (the last 5 messages) on connect: ours are the last 3.
    started = time.monotonic()
    result = cli("cat", gw.ws + "/chat/websocket", "--no-input", "--count", "2", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    assert len(lines_of(result.stdout)) == 2
    assert time.monotonic() - started < 5
    result = cli("cat", gw.url + "/chat", "-t", "xhr-streaming", "--no-input", "--jsonl", "--timeout", "1")
    received = [r["data"] for r in records(result.stdout) if r["dir"] == "in"]
    assert received[-3:] == marks
    result = cli("cat", gw.url + "/chat", "-t", "xhr-streaming", "--no-input", "-n", str(len(received)),
                 "--jsonl", "--timeout", "20")
    recs = records(result.stdout)
    assert [r["data"] for r in recs if r["dir"] == "in"] == received
    assert recs[-1]["dir"] == "close" and recs[-1]["by"] == "client"


def test_count_in_pipe_mode(gw: CliGateway) -> None:
    with background("cat", gw.ws + "/echo/websocket", "--count", "2", stdin=subprocess.PIPE) as proc:
        assert proc.proc.stdin is not None
        proc.proc.stdin.write("1\n2\n3\n")
        proc.proc.stdin.flush()
        # stdin stays open: --count alone ends it.
        assert proc.wait(T) == 0
        assert proc.rest() == ["1", "2"]


def test_timeout(gw: CliGateway) -> None:
    started = time.monotonic()
    result = cli("cat", gw.ws + "/quiet/websocket", "--no-input", "--timeout", "0.5", "--jsonl")
    elapsed = time.monotonic() - started
    assert result.returncode == 0
    assert [r["dir"] for r in records(result.stdout)] == ["open", "close"]
    assert 0.5 <= elapsed < 5


def test_timeout_with_open_stdin(gw: CliGateway) -> None:
    """A silent stdin that never ends does not keep cat alive past --timeout."""
    with background("cat", gw.ws + "/quiet/websocket", "--timeout", "0.5", stdin=subprocess.PIPE) as proc:
        assert proc.wait(T) == 0


def test_timeout_sockjs_polling(gw: CliGateway) -> None:
    started = time.monotonic()
    result = cli("cat", gw.url + "/quiet", "-t", "jsonp-polling", "--no-input", "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 6


# -- exit statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ws://127.0.0.1:{port}/echo/websocket", "http://127.0.0.1:{port}/echo"])
def test_exit_1_nothing_listens(url: str) -> None:
    result = cli("cat", url.format(port=free_port()), "--no-input")
    assert result.returncode == 1
    assert "could not connect to" in result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr


@pytest.mark.parametrize("target", ["raw", "xhr-polling"])
def test_exit_1_no_such_endpoint(gw: CliGateway, target: str) -> None:
    args = [gw.ws + "/nothere/websocket"] if target == "raw" else [gw.url + "/nothere", "-t", target]
    result = cli("cat", *args, "--no-input")
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["ftp://127.0.0.1/echo"], "unsupported URL"),
    (["ws://127.0.0.1:1/x", "-H", "no colon here"], "--header takes 'Name: value'"),
    (["http://127.0.0.1:1/x", "--transport", "carrier-pigeon"], "invalid choice"),
    (["ws://127.0.0.1:1/x", "--count", "many"], "not a whole number: 'many'"),
    ([], "the following arguments are required: url"),
])
def test_exit_2_usage(args: list[str], message: str) -> None:
    result = cli("cat", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_exit_3_closed_by_the_application(gw: CliGateway) -> None:
    """An app-mode connection closed by the application with 4000."""
    with background("cat", gw.ws + "/app/websocket", "--no-input", "--timeout", "20") as proc:
        conn = wait_connection(gw, "/app")["conn"]
        assert api(gw, "close", conn=conn, code=4000, reason="bye") == {"conn": conn, "code": 4000}
        assert proc.wait(T) == 3
        assert "closed by the server: 4000 bye" in proc.stderr_text


def test_exit_0_closed_by_the_application_normally(gw: CliGateway) -> None:
    with background("cat", gw.url + "/app", "-t", "xhr-streaming", "--no-input", "--jsonl", "--timeout", "20") as proc:
        conn = wait_connection(gw, "/app")["conn"]
        api(gw, "close", conn=conn, code=1000, reason="done")
        assert proc.wait(T) == 0
        recs = [json.loads(line) for line in proc.rest()]
        assert recs[-1]["dir"] == "close" and recs[-1]["code"] == 1000 and recs[-1]["reason"] == "done"
        assert proc.stderr_text == ""
